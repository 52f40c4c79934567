"""The finetune study: the Adam stopping rule, pretrained weights read from a real torch state_dict
file (and clear errors naming the path), and the quick preset end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sgdbayes.models.cnn import ConvNet
from sgdbayes.pipelines.finetune import adam_stop_epoch, load_backbone_weights
from sgdbayes.reporting.format import fmt_estimate
from sgdbayes.reporting.toolkit import read_results_json
from sgdbayes.runner.orchestrate import run_study


def test_adam_stop_epoch():
    L = np.array([[1.0, 0.5, 0.3, 0.29995, 0.29993, 0.29992, 0.2999],   # improves < 1e-4 over 3 epochs at e=6
                  [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])                 # never: max epochs
    assert adam_stop_epoch(L, 1e-4, 3).tolist() == [6, 7]


def test_backbone_weights_from_state_dict(tmp_path):
    torch.manual_seed(3)
    net = ConvNet((4, 8), 1, 7)                       # a different old head (7 classes): replaced, not an error
    p = tmp_path / "backbone.pt"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, p)   # DataParallel-style keys
    got = load_backbone_weights(str(p), (4, 8), 5)
    assert torch.equal(got[0].weight, net[0].weight)
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone_weights(str(p), (4, 16), 5)
    with pytest.raises(ValueError, match="nothere.pt"):
        load_backbone_weights(str(tmp_path / "nothere.pt"), (4, 8), 5)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_backbone_weights(str(tmp_path / "junk.pt"), (4, 8), 5)


def test_missing_weights_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="backbone.weights"):
        run_study("finetune", ["quick"], sets=[f"backbone.weights=\"{tmp_path / 'x.pt'}\""], out=tmp_path,
                  device="cpu", log=lambda m: None)


def test_quick_with_local_weights_and_end_to_end(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "w.pt"
    torch.save(ConvNet((16, 32), 1, 5).state_dict(), p)
    out = tmp_path / "o"
    run_study("finetune", ["quick"], sets=[f"backbone.weights=\"{p}\"", "sgd.seeds=2"], out=out, device="cpu",
              log=lambda m: None)
    r = read_results_json(out / "results.json")
    assert r["image"]["backbone"]["source"].startswith("state_dict") and r["lm"] is None
    text = (out / "report.md").read_text()
    for h in r["hypotheses"]:
        assert fmt_estimate(h.estimate, h.ci_low, h.ci_high) in text
    assert {h.id for h in r["hypotheses"]} == {"H1-finetune", "H2"}
    assert len(r["image"]["transition"]) == 2 and "ResNet18" in text and "Sharding" in text
