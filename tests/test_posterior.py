"""Posterior SGLD (temperature 1, docs/methods.md#posterior-concentration) tests."""

import numpy as np
import pytest
import torch

from sgdbayes.models import MLPSpec
from sgdbayes.sampling import FunctionPotential, PosteriorConfig, sample_posterior


class GaussianMeanPotential:
    """ℓ_i(w) = |w − x_i|²/2 (unit-variance Gaussian likelihood, flat prior):
    the temperature-1 posterior is N(x̄, I/n) exactly."""

    def __init__(self, n=200, d=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = 1.0 + torch.randn(n, d, generator=g, dtype=torch.float64)
        self.n = n

    def __call__(self, w, idx):
        if idx is None:
            return 0.5 * ((w.unsqueeze(1) - self.x.unsqueeze(0)) ** 2).sum(-1).mean(1)
        return 0.5 * ((w.unsqueeze(1) - self.x[idx]) ** 2).sum(-1).mean(1)


def test_samples_target_temperature_one_posterior():
    """Mean and variance of the samples match N(x̄, 1/n) (n = 200).
    Tolerances: mean within 4·sd/√ESS; variance within 15 % (Euler bias ε·n/2 = 1 %,
    minibatch-gradient noise ≈ ε n²Var(g_B)/4 ≈ 2.5 %, Monte-Carlo ≈ 5 % at ESS ~ 1000)."""
    pot = GaussianMeanPotential()
    xbar = pot.x.mean(0)
    start = torch.stack([xbar + 0.3, xbar - 0.3])
    cfg = PosteriorConfig(step_size=1e-3, num_samples=1000, num_burnin_steps=200, num_steps_bw_samples=10,
                          batch_size=50, chains_per_start=2, record="batch")
    r = sample_posterior(start, pot, config=cfg, start_ids=[0, 1])
    assert r.samples.shape == (4, 1000, 2)
    assert r.nbeta == 200
    s = r.samples.reshape(-1, 2)
    sd = (1 / 200) ** 0.5
    assert torch.all((s.mean(0) - xbar).abs() < 4 * sd / np.sqrt(500)), (s.mean(0), xbar)
    v = s.var(0)
    assert torch.all((v * 200 - 1).abs() < 0.15), v * 200
    assert np.all(r.rhat_chain < 1.05)
    assert r.group_diagnostics["rhat"].iloc[0] < 1.05
    assert r.group_diagnostics["ess"].iloc[0] > 500


def test_mlp_posterior_shapes_diagnostics_and_groups():
    from sgdbayes.data import load_dataset

    ds = load_dataset("moons", n=256, n_test=16)
    spec = MLPSpec((2, 16, 2))
    w = spec.init([0, 1, 2])
    cfg = PosteriorConfig(num_samples=30, num_burnin_steps=10, num_steps_bw_samples=2, batch_size=64)
    r = sample_posterior(w, spec=spec, data=ds, config=cfg, start_ids=[10, 11, 12], groups=["a", "a", "b"])
    assert r.samples.shape == (3, 30, spec.n_params)
    assert r.loss_traces.shape == (3, 30)
    assert np.isfinite(r.loss_traces).all() and not r.diverged.any()
    # loss trace is the full-data loss of the recorded samples
    full = spec.loss(r.samples[:, 5], ds.x_train, ds.y_train).numpy()
    np.testing.assert_allclose(r.loss_traces[:, 5], full, rtol=1e-5)
    # the first sample is the weights after burn-in + (steps/sample − 1) updates: it moved
    assert not torch.allclose(r.samples[:, 0], w)
    gd = r.group_diagnostics
    assert list(gd["group"]) == ["a", "b"] and list(gd["n_chains"]) == [2, 1]
    assert np.isfinite(r.rhat_chain).all() and np.isfinite(r.ess_chain).all()
    assert "Posterior SGLD" in r.summary()
    assert r.chain_frame()["start_id"].tolist() == [10, 11, 12]


def test_rhat_flags_chains_in_different_basins():
    """Two starts in separate wells of a double well (barrier ≫ 1/n): the group's
    split-R̂ must be large, each chain's own R̂ near 1."""
    pot = FunctionPotential(lambda w: ((w[:, 0] ** 2 - 1) ** 2), n=500)
    start = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    cfg = PosteriorConfig(step_size=1e-4, num_samples=400, num_burnin_steps=100, num_steps_bw_samples=5,
                          batch_size=None, record="full")
    r = sample_posterior(start, pot, config=cfg)
    s = r.samples[:, :, 0]
    assert (s[0] < 0).all() and (s[1] > 0).all()  # never crossed
    # the loss is symmetric, so compare the sampled coordinate instead of the loss
    from sgdbayes.sampling import split_rhat

    assert split_rhat(s.numpy()) > 1.5  # rank-normalized R̂ saturates under complete separation
    assert split_rhat(s.numpy(), rank_normalize=False) > 10
    assert np.all(r.rhat_chain < 1.1)


@pytest.mark.parametrize("kwargs,name", [
    (dict(step_size=0.0), "step_size"), (dict(num_samples=0), "num_draws"), (dict(temperature=-1.0), "temperature"),
    (dict(record="bogus"), "record"), (dict(chains_per_start=0), "chains_per_start"),
])
def test_posterior_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PosteriorConfig(**kwargs)


def test_posterior_bad_inputs():
    pot = FunctionPotential(lambda w: (w ** 2).sum(1), n=10)
    with pytest.raises(ValueError, match="w_start"):
        sample_posterior(torch.tensor([[float("inf"), 0.0]]), pot)
    with pytest.raises(ValueError, match="groups"):
        sample_posterior(torch.zeros(2, 2), pot, groups=[0])
    with pytest.raises(ValueError, match="potential"):
        sample_posterior(torch.zeros(2, 2))
