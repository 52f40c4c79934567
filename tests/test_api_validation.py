"""The Python API rejects what it cannot honour, with a message that says what to do
(issue 10 items 7, 8, 14, 19; issue 16 item 8)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sgdbayes.data import load_dataset
from sgdbayes.engine import EnsembleConfig, Hook, train_ensemble
from sgdbayes.models import MLPSpec
from sgdbayes.sampling import LLCConfig, PosteriorConfig, estimate_llc, sample_posterior

CFG = LLCConfig(step_size=1e-4, num_chains=2, num_draws=6, batch_size=16)


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n=64, n_test=16)


def _mlp(seed=0, d=2, c=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, c))


# ------------------------------------------------------------------ issue 10, item 14
@pytest.mark.parametrize("seeds", [2.5, [0.5, 1.7], [1, 1]])
def test_seeds_must_be_distinct_integers(seeds):
    with pytest.raises(ValueError, match="seeds"):
        EnsembleConfig(seeds=seeds, steps=1)


def test_output_width_must_match_the_classes(moons):
    with pytest.raises(ValueError, match="output width is 3 but data 'moons' has 2 classes"):
        train_ensemble(EnsembleConfig(widths=(None, 8, 3), steps=2, batch_size=16, progress=False), moons)
    with pytest.raises(ValueError, match="output width is 3"):
        train_ensemble(EnsembleConfig(model=lambda: _mlp(c=3), steps=2, batch_size=16, progress=False), moons)


def test_labels_out_of_range_and_float_labels_are_rejected():
    x = torch.randn(32, 2)
    with pytest.raises(ValueError, match=r"labels span 0..4, outside the model's 2 classes"):
        train_ensemble(EnsembleConfig(model=_mlp, steps=2, batch_size=8, progress=False), (x, torch.arange(32) % 5))
    with pytest.raises(ValueError, match=">= 0"):
        train_ensemble(EnsembleConfig(model=_mlp, steps=2, batch_size=8, progress=False), (x, -(torch.arange(32) % 2)))
    with pytest.raises(ValueError, match="integer class labels"):
        train_ensemble(EnsembleConfig(model=_mlp, steps=2, batch_size=8, progress=False), (x, torch.rand(32)))


def test_nan_in_the_data_is_blamed_on_the_data(moons):
    x = moons.x_train.clone()
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match="the data is at fault.*example 5"):
        train_ensemble(EnsembleConfig(model=_mlp, steps=2, batch_size=8, progress=False), (x, moons.y_train))
    with pytest.raises(ValueError, match="the data is at fault.*example 5"):
        estimate_llc([_mlp()], (x, moons.y_train), config=CFG, progress=False)


def test_estimate_llc_on_one_module_asks_for_a_list(moons):
    with pytest.raises(ValueError, match="pass a list of modules"):
        estimate_llc(_mlp(), (moons.x_train, moons.y_train), config=CFG)


def test_models_without_parameters_are_rejected(moons):
    with pytest.raises(ValueError, match="no parameters"):
        train_ensemble(EnsembleConfig(model=nn.ReLU, steps=1, batch_size=8, progress=False), moons)
    with pytest.raises(ValueError, match="no trainable parameters"):
        estimate_llc([nn.ReLU()], (moons.x_train, moons.y_train), config=CFG)
    frozen = _mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        estimate_llc([frozen], (moons.x_train, moons.y_train), config=CFG)


def test_dropout_and_batchnorm_in_train_mode_say_call_eval_and_eval_works(moons):
    drop = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"call \.eval\(\)"):
        estimate_llc([drop], (moons.x_train, moons.y_train), config=CFG)
    bn = [nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)) for _ in range(2)]
    with pytest.raises(ValueError, match=r"call \.eval\(\) on the modules first"):
        estimate_llc(bn, (moons.x_train, moons.y_train), config=CFG)
    r = estimate_llc([m.eval() for m in bn], (moons.x_train, moons.y_train), config=CFG, progress=False)  # the workaround
    assert np.isfinite(r.llc).all() and r.mode == "eval"


def test_float_targets_need_a_criterion(moons):
    y = torch.randn(64, 2)
    with pytest.raises(ValueError, match="criterion="):
        estimate_llc([_mlp()], (moons.x_train, y), config=CFG)
    r = estimate_llc([_mlp()], (moons.x_train, y), config=CFG, criterion=F.mse_loss, progress=False)
    assert np.isfinite(r.llc).all()


def test_cuda_without_cuda_is_a_value_error(moons):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_ensemble(EnsembleConfig(device="cuda", steps=1, batch_size=8, progress=False), moons)


# ------------------------------------------------------------------ issue 10, item 7
def test_displacement_is_accumulated_in_float64(moons):
    """float32 weights of 1e30 are finite, and so is their displacement (a float32 norm
    overflowed to inf); the seed is not diverged."""
    def blow(state):
        if state.step == 4:
            w = state.w
            w[0, -1] = 1e30   # the last output bias of seed 0: loss stays finite
            state.set_weights(w)

    res = train_ensemble(EnsembleConfig(widths=(None, 8, None), steps=8, batch_size=16, seeds=2, lr=1e-30,
                                        record_every=1, progress=False), moons, hooks=[Hook(4, blow, "blow")])
    assert not res.final["diverged"].any()
    assert np.isfinite(res.displacement).all()
    assert res.displacement[0, -1] == pytest.approx(1e30, rel=1e-6)


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.spare = nn.Parameter(torch.zeros(3))   # not used by forward

    def forward(self, x):
        return self.lin(x)


def test_a_non_finite_displacement_marks_the_seed_diverged(moons):
    def poison(state):
        if state.step == 5:
            w = state.w
            w[1, -1] = float("inf")   # seed 1's unused parameter: its loss stays finite
            state.set_weights(w)

    res = train_ensemble(EnsembleConfig(model=_Unused, steps=12, batch_size=16, seeds=3, record_every=2,
                                        record_log_points=0, progress=False), moons, hooks=[Hook(5, poison, "p")])
    fin = res.final.set_index("seed")
    assert fin.loc[1, "diverged"] and fin.loc[1, "diverged_step"] == 6
    assert not fin.loc[[0, 2], "diverged"].any()
    assert np.isnan(res.displacement[1][res.steps >= 6]).all() and np.isfinite(res.displacement[1][res.steps < 6]).all()


# ------------------------------------------------------------------ issue 10, item 8
def test_estimate_llc_skips_diverged_seeds(moons):
    res = train_ensemble(EnsembleConfig(widths=(None, 8, None), lr=1e8, seeds=8, steps=20, batch_size=16,
                                        progress=False), moons)
    div = res.final["diverged"].to_numpy()
    assert div.any() and (~div).any()
    r = estimate_llc(res, config=CFG, progress=False)
    assert (r.excluded == div).all()
    assert np.isnan(r.llc[div]).all() and not r.all_diverged[div].any()
    assert "skipped" in r.summary()
    with pytest.raises(ValueError, match="diverged in training"):
        estimate_llc(res, config=CFG, skip_diverged=False)


# ------------------------------------------------------------------ issue 10, item 19
class _Bar:
    made = []

    def __init__(self, total=None, **kw):
        self.total, self.n = total, 0
        _Bar.made.append(self)

    def update(self, k=1):
        self.n += k

    def close(self):
        pass


def test_progress_bars_on_sampling(moons, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    spec = MLPSpec((2, 8, 2))
    w = spec.init([0, 1])
    _Bar.made.clear()
    estimate_llc(w, moons, spec=spec, config=CFG)
    sample_posterior(w, spec=spec, data=moons, config=PosteriorConfig(num_samples=3, num_burnin_steps=1,
                                                                      num_steps_bw_samples=1, batch_size=16))
    assert [(b.total, b.n) for b in _Bar.made] == [(6, 6), (4, 4)]
    _Bar.made.clear()
    estimate_llc(w, moons, spec=spec, config=CFG, progress=False)
    assert not _Bar.made


# ------------------------------------------------------------------ issue 16, item 8
def test_dataloader_batch_size_is_the_sgld_batch(moons):
    loader = DataLoader(TensorDataset(moons.x_train, moons.y_train), batch_size=32, shuffle=True)
    r = estimate_llc([_mlp()], loader, config=LLCConfig(num_chains=2, num_draws=4), progress=False)
    assert r.config.batch_size == 32 and r.nbeta == pytest.approx(32 / np.log(32))


def test_frozen_parameters_are_held_fixed(moons):
    """A frozen first layer is not sampled: the draws equal those of the same model whose
    first layer is a constant (buffer)."""
    class Fixed(nn.Module):
        def __init__(self, src):
            super().__init__()
            self.register_buffer("w1", src[0].weight.detach().clone())
            self.register_buffer("b1", src[0].bias.detach().clone())
            self.out = src[2]

        def forward(self, x):
            return self.out(torch.relu(F.linear(x, self.w1, self.b1)))

    m = _mlp()
    for p in m[0].parameters():
        p.requires_grad_(False)
    a = estimate_llc([m], (moons.x_train, moons.y_train), config=CFG, progress=False)
    b = estimate_llc([Fixed(_mlp())], (moons.x_train, moons.y_train), config=CFG, progress=False)
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-6)
    assert a.mode == "train (no batch norm or dropout)"


def test_evaluate_with_dict_batches_equals_the_criterion_path(moons):
    x, y = moons.x_train, moons.y_train
    a = estimate_llc([_mlp(1), _mlp(2)], (x, y), config=CFG, progress=False)

    def evaluate(model, batch):
        return F.cross_entropy(model(batch["inputs"]), batch["labels"])

    b = estimate_llc([_mlp(1), _mlp(2)], {"inputs": x, "labels": y}, evaluate=evaluate, config=CFG, progress=False)
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-6)
    with pytest.raises(ValueError, match="evaluate="):
        estimate_llc([_mlp()], {"inputs": x, "labels": y}, config=CFG)


@pytest.mark.parametrize("criterion", [nn.CrossEntropyLoss(reduction="sum"),
                                       lambda out, y: F.cross_entropy(out, y, reduction="sum")])
def test_sum_reduction_is_rejected(moons, criterion):
    with pytest.raises(ValueError, match="mean"):
        estimate_llc([_mlp()], (moons.x_train, moons.y_train), config=CFG, criterion=criterion)
