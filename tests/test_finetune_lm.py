"""The finetune study's language-model variant (App G.3) and pretrained weights from a local path: a
torchvision-keyed ResNet state_dict, Hugging Face image and causal-LM folders written with
save_pretrained from tiny random configs (never downloaded), the loaders' round trips, clear errors
(exit 2) naming the key and the path, and the quick-lm preset end to end through the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sgdbayes.models import ModuleSpec
from sgdbayes.models.pretrained import CausalLMLogits, tv_resnet
from sgdbayes.pipelines.finetune_backbone import Backbone, build_backbone
from sgdbayes.pipelines.finetune_lm import LMConfig, lm_model, load_tokens
from sgdbayes.reporting.format import fmt_estimate
from sgdbayes.reporting.toolkit import read_results_json
from sgdbayes.study import main

transformers = pytest.importorskip("transformers")


def _gpt2_folder(path, vocab=11, positions=16):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    return model


def _tokens(path, n=64, T=9, vocab=11):
    np.save(path, np.random.default_rng(0).integers(0, vocab, size=(n, T)).astype(np.int64))
    return path


def test_tv_resnet_has_torchvisions_keys_and_sizes():
    # torchvision.models.resnet18 / resnet34: 11,689,512 / 21,797,672 parameters, 122 / 218 state_dict entries
    for arch, n, entries in (("resnet18", 11_689_512, 122), ("resnet34", 21_797_672, 218)):
        net = tv_resnet(arch)
        assert sum(p.numel() for p in net.parameters()) == n
        assert len(net.state_dict()) == entries
    sd = tv_resnet("resnet18").state_dict()
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1000, 512) and "layer4.1.bn2.num_batches_tracked" in sd
    assert "layer1.0.downsample.0.weight" not in sd


def test_resnet_state_dict_round_trip(tmp_path):
    torch.manual_seed(1)
    net = tv_resnet("resnet18")
    p = tmp_path / "r18.pth"
    torch.save({"state_dict": net.state_dict()}, p)          # a checkpoint wrapping the state_dict
    body, source = build_backbone(Backbone(arch="resnet18", weights=str(p)), 5)
    assert "resnet18" in source and torch.equal(body.body.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    assert torch.equal(body.body.bn1.running_var, net.bn1.running_var)
    with torch.no_grad():
        f = body(torch.rand(4, 1, 8, 8))
    assert f.shape == (4, 512) and torch.isfinite(f).all()
    with pytest.raises(ValueError, match=r"backbone.weights = .*r18.pth.* does not fit torchvision resnet34"):
        build_backbone(Backbone(arch="resnet34", weights=str(p)), 5)


def test_hf_image_folder_round_trip(tmp_path):
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(2)
    model = transformers.ViTForImageClassification(cfg)
    model.save_pretrained(tmp_path / "vit")
    body, source = build_backbone(Backbone(weights=str(tmp_path / "vit")), 5)
    assert source.startswith("Hugging Face ViTForImageClassification")
    got = dict(body.body.named_parameters())
    for name, v in model.named_parameters():
        if not name.startswith("classifier"):
            assert torch.equal(got[name], v), name
    with torch.no_grad():
        assert body(torch.rand(3, 1, 8, 8)).shape == (3, 16)   # the CLS features, the classifier replaced


def test_hf_causal_lm_round_trip_and_tied_head(tmp_path):
    saved = _gpt2_folder(tmp_path / "gpt2")
    spec, vocab, positions = lm_model(LMConfig(weights=str(tmp_path / "gpt2")))
    assert (vocab, positions) == (11, 16)
    w, _ = spec.initialize([0])
    assert torch.equal(w[0], torch.nn.utils.parameters_to_vector(saved.parameters()))
    x = torch.randint(0, 11, (3, 8))
    with torch.no_grad():                       # the batched path keeps lm_head tied to wte
        assert torch.allclose(spec.apply(w, x, shared=True)[0], saved(input_ids=x).logits, atol=1e-5)
    data = load_tokens(str(_tokens(tmp_path / "t.npy")), vocab, positions, 0.25, 0)
    assert data.x_train.shape == (48, 8) and torch.equal(data.x_train[:, 1:], data.y_train[:, :-1])


def test_tied_weights_stay_tied_in_a_module_ensemble():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 4)
            self.out = torch.nn.Linear(4, 5, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, t):
            return self.out(self.emb(t))

    spec = ModuleSpec(Tied)
    w, _ = spec.initialize([3, 4])
    assert spec.n_params == 20
    x = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        assert torch.allclose(spec.apply(w, x, shared=True)[1], spec.module(w[1])(x), atol=1e-6)


def test_paper_presets_need_local_weights(tmp_path, capsys):
    for preset, key in (("paper", "backbone.weights"), ("paper-lm", "lm.weights")):
        assert main(["finetune", "--preset", preset, "--out", str(tmp_path / preset)]) == 2
        assert f"needs {key}=PATH" in capsys.readouterr().err


@pytest.mark.parametrize("sets, needle", [
    (["lm.weights=\"{d}/nothere\"", "lm.tokens=\"{d}/t.npy\""], "lm.weights = '{d}/nothere': no such folder"),
    (["lm.weights=\"{d}/empty\"", "lm.tokens=\"{d}/t.npy\""], "lm.weights = '{d}/empty' is not a Hugging Face"),
    (["lm.weights=\"{d}/gpt2\""], "needs lm.tokens"),
    (["lm.weights=\"{d}/gpt2\"", "lm.tokens=\"{d}/none.npy\""], "lm.tokens = '{d}/none.npy': no such file"),
    (["lm.weights=\"{d}/gpt2\"", "lm.tokens=\"{d}/junk.npy\""], "lm.tokens = '{d}/junk.npy' is not a .npy"),
    (["lm.weights=\"{d}/gpt2\"", "lm.tokens=\"{d}/big.npy\""], "outside the model's vocabulary"),
])
def test_lm_bad_paths_exit_2_naming_key_and_path(tmp_path, capsys, sets, needle):
    d = tmp_path
    _gpt2_folder(d / "gpt2")
    (d / "empty").mkdir()
    _tokens(d / "t.npy")
    (d / "junk.npy").write_text("not numpy")
    np.save(d / "big.npy", np.full((8, 5), 99, np.int64))
    args = ["finetune", "--preset", "quick-lm", "--out", str(d / "o")]
    for s in sets:
        args += ["--set", s.format(d=d)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle.format(d=d) in err and "Traceback" not in err


@pytest.mark.parametrize("sets, needle", [
    (["backbone.arch=\"resnet18\""], "backbone.arch = 'resnet18' is not pretrained here: set backbone.weights"),
    (["backbone.arch=\"resnet18\"", "backbone.weights=\"{d}/junk.pt\""],
     "backbone.weights = '{d}/junk.pt' is not a torch state_dict file"),
    (["backbone.weights=\"{d}/missing.pth\""], "backbone.weights = '{d}/missing.pth': no such file"),
])
def test_backbone_bad_paths_exit_2(tmp_path, capsys, sets, needle):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    args = ["finetune", "--preset", "quick", "--out", str(tmp_path / "o")]
    for s in sets:
        args += ["--set", s.format(d=tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle.format(d=tmp_path) in err and "Traceback" not in err


def test_quick_lm_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "lm"
    assert main(["finetune", "--preset", "quick-lm", "--out", str(out), "--device", "cpu"]) == 0
    r = read_results_json(out / "results.json")
    assert r["image"] is None and {h.id for h in r["hypotheses"]} == {"H1-lm", "H2-lm"}
    lm = r["lm"]
    assert lm["model"]["source"] == "pretrained here" and lm["model"]["loss_at_stop"] > lm["model"]["loss_floor"]
    assert len(lm["runs"]) == 3 and lm["summary"]["n_fitted"] == 3
    text = (out / "report.md").read_text()
    for h in r["hypotheses"]:
        assert fmt_estimate(h.estimate, h.ci_low, h.ci_high) in text
    assert "TinyStories-33M" in text and "Table 4 (Adam)" in text and (out / "figures/fig20_lm_displacement.png").is_file()


def test_lm_continues_a_local_hf_model(tmp_path):
    _gpt2_folder(tmp_path / "gpt2")
    _tokens(tmp_path / "t.npy")
    out = tmp_path / "o"
    assert main(["finetune", "--preset", "quick-lm", "--out", str(out), "--device", "cpu",
                 "--set", f"lm.weights=\"{tmp_path / 'gpt2'}\"", "--set", f"lm.tokens=\"{tmp_path / 't.npy'}\"",
                 "--set", "lm_sgd.steps=200", "--set", "lm_llc.num_draws=20"]) == 0
    r = read_results_json(out / "results.json")
    assert r["lm"]["model"]["source"].startswith("Hugging Face GPT2LMHeadModel")
    assert r["lm"]["model"]["n_params"] == sum(p.numel() for p in CausalLMLogits(
        transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")).parameters())
    assert np.isfinite(r["lm"]["final_train_loss"]).all()
