"""The grokking study: declaration and presets, config errors naming their key, the quick preset end
to end (verdict table = results.json), and seed i's curves independent of the other seeds in the batch."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ruptures")

from sgdbayes.pipelines.grokking import first_step_at
from sgdbayes.reporting.format import fmt_estimate
from sgdbayes.reporting.toolkit import read_results_json
from sgdbayes.runner.config import list_studies, load_study, resolve_config
from sgdbayes.runner.orchestrate import run_study


def test_declared_with_presets():
    assert "grokking" in list_studies()
    decl = load_study("grokking")
    assert {"paper", "quick"} <= set(decl.presets) and decl.default_preset == "paper"
    cfg = resolve_config(decl, ["paper"])
    assert cfg.llc.num_draws == 400 and cfg.llc.step_size == 1e-5 and cfg.train.batch_size == 32


@pytest.mark.parametrize("sets, key", [(["train.batch_size=1000"], "train.batch_size"),
                                       (["llc_schedule.every=15"], "record_every"),
                                       (["data.op=\"div\""], "op")])
def test_bad_config_names_the_key(sets, key, tmp_path):
    with pytest.raises(Exception, match=key):
        run_study("grokking", ["quick"], sets=sets, out=tmp_path, device="cpu", log=lambda m: None)


def test_first_step_at():
    v = np.array([[0.1, 0.5, 0.95, 0.97], [0.1, 0.2, 0.3, 0.4]])
    s = first_step_at([10, 20, 30, 40], v, 0.9)
    assert s[0] == 30 and np.isnan(s[1])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("grok")
    run_study("grokking", ["quick"], out=d, device="cpu", log=lambda m: None)
    return d


def test_quick_end_to_end(quick):
    r = read_results_json(quick / "results.json")
    ids = [h.id for h in r["hypotheses"]]
    assert ids == ["H8-llc", "H8-weights", "H8-llc-weights", "H9"]
    text = (quick / "report.md").read_text()
    for h in r["hypotheses"]:
        assert fmt_estimate(h.estimate, h.ci_low, h.ci_high) in text and f"**{h.verdict}**" in text
    assert "Sharding" in text and (quick / "figures" / "fig5_6_runs.png").exists()
    assert r["summary"]["n_grokked"] >= 1, "the quick preset is meant to grok"
    assert len(r["per_run"]) == 3


def test_seed_independent_of_batch(quick, tmp_path):
    """Seed 1 trained alone gives the same accuracy, λ̂ and displacement as seed 1 in the 3-seed batch."""
    from sgdbayes.runner.orchestrate import run_study as rs

    rs("grokking", ["quick"], sets=["train.seeds=1", "train.seed_offset=1"], out=tmp_path, device="cpu",
       log=lambda m: None)
    a, b = read_results_json(quick / "results.json"), read_results_json(tmp_path / "results.json")
    pa = next(p for p in a["per_run"] if p["seed"] == 1)
    pb = b["per_run"][0]
    assert pb["seed"] == 1
    for k in ("final_test_acc", "final_train_acc", "memorize_step"):
        assert pa[k] == pytest.approx(pb[k], rel=1e-6, nan_ok=True)
    for k in ("test_acc_jump_steps", "llc_jump_steps", "weights_jump_steps"):
        assert pa[k] == pb[k]
