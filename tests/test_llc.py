"""LLC estimator tests: known learning coefficients, result object, module/ensemble inputs, hook.

Tolerances for the known-λ tests: |λ̂ − λ_target| < 4·se + bias allowance, where
se = chain std / √chains (chains are independent, so this is the Monte-Carlo
error of the mean; 4 se makes a false failure ~1e-4 likely), and the bias
allowance covers what the finite-nβ / finite-ε / localization asymptotics leave:
stated per test.
"""

import numpy as np
import pytest
import torch

from sgdbayes.models import MLPSpec
from sgdbayes.sampling import (FunctionPotential, LLCConfig, LLCTrainingHook, MLPPotential, estimate_llc,
                               estimate_llc_potential)


class LinearRegressionPotential:
    """Per-sample negative log-likelihood of y = x·w + N(0, σ²) (constant dropped):
    ℓ_i(w) = (y_i − x_i·w)² / (2σ²); batched over rows of w [M, d]. Regular: λ = d/2."""

    def __init__(self, n=1000, d=5, sigma=1.0, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g, dtype=dtype)
        self.y = self.x @ torch.randn(d, generator=g, dtype=dtype) + sigma * torch.randn(n, generator=g, dtype=dtype)
        self.sigma, self.n, self.d = sigma, n, d

    def mle(self):
        return torch.linalg.lstsq(self.x, self.y.unsqueeze(1)).solution.squeeze(1)

    def expected_llc(self, nbeta, gamma):
        """½ tr(nβH(nβH + γI)⁻¹), H = XᵀX/(nσ²): the exact E[nβ(L(w) − L(w*))] under the
        localized tempered posterior ∝ exp(−nβL(w) − γ/2|w − w*|²); → d/2 as nβ/γ → ∞."""
        ev = torch.linalg.eigvalsh(self.x.T @ self.x / (self.n * self.sigma ** 2)).numpy()
        return 0.5 * float(np.sum(nbeta * ev / (nbeta * ev + gamma)))

    def __call__(self, w, idx):
        if idx is None:
            r = self.y.unsqueeze(1) - self.x @ w.T
            return (r ** 2).mean(0) / (2 * self.sigma ** 2)
        r = self.y[idx] - (self.x[idx] * w.unsqueeze(1)).sum(-1)
        return (r ** 2).mean(1) / (2 * self.sigma ** 2)


def _moons(n=512):
    from sgdbayes.data import load_dataset

    ds = load_dataset("moons", n=n, n_test=64)
    return ds


def test_regular_model_gives_half_d():
    """Linear regression, d = 5, nβ = n/log n (WBIC), minibatch SGLD (B = 100).
    Target ½tr(nβH(nβH+γI)⁻¹) = 2.48 (d/2 = 2.5 up to the γ = 1 localization).
    Bias allowance 0.05·d/2: Euler discretization (ε nβ h ≈ 0.015 → ~1 %) and
    minibatch-gradient noise (ε nβ² Var(g_B)/4 ≈ 0.5 %)."""
    pot = LinearRegressionPotential()
    cfg = LLCConfig(step_size=1e-4, localization=1.0, nbeta="n", batch_size=100, num_chains=8, num_draws=2000,
                    num_burnin_steps=500, seed=3)
    r = estimate_llc_potential(pot, pot.mle().unsqueeze(0), cfg)
    assert r.nbeta == pytest.approx(1000 / np.log(1000))
    target = pot.expected_llc(r.nbeta, 1.0)
    assert abs(target - 2.5) < 0.05
    se = r.llc_se[0]
    assert se < 0.3, se  # the check below must be informative
    assert abs(r.llc[0] - target) < 4 * se + 0.05 * 2.5, (r.llc[0], target, se)
    assert not r.trend_flag[0]


def test_degenerate_quartic_gives_quarter():
    """K(w) = w⁴ in 1-D: λ = 1/4 (m = 1). Without localization E_β[βK] = 1/4 exactly for
    every β (homogeneity); γ = 0.01 at nβ = 1e4 changes it by O(γ/√nβ) ≈ 1e-4.
    Bias allowance 0.02 for the Euler discretization (ε·curvature ≈ 0.01)."""
    pot = FunctionPotential(lambda w: (w ** 4).sum(1), n=1)
    cfg = LLCConfig(step_size=1e-5, localization=0.01, nbeta=1e4, batch_size=None, num_chains=32, num_draws=6000,
                    num_burnin_steps=1500)
    r = estimate_llc_potential(pot, torch.zeros(1, 1, dtype=torch.float64), cfg)
    assert r.llc_se[0] < 0.03
    assert abs(r.llc[0] - 0.25) < 4 * r.llc_se[0] + 0.02, (r.llc[0], r.llc_se[0])
    # and it is clearly not the regular value d/2 = 0.5
    assert r.llc[0] < 0.4


def test_mixed_normal_crossing_is_additive():
    """K(w) = w1² + w2⁴: λ = 1/2 + 1/4 = 3/4 (independent coordinates, m = 1).
    ε = 1e-6 keeps the quadratic direction's Euler bias at 1/(2 − εnβ) − 1/2 ≈ 0.3 %."""
    pot = FunctionPotential(lambda w: w[:, 0] ** 2 + w[:, 1] ** 4, n=1)
    cfg = LLCConfig(step_size=1e-6, localization=0.01, nbeta=1e4, batch_size=None, num_chains=32, num_draws=6000,
                    num_burnin_steps=2000, seed=1)
    r = estimate_llc_potential(pot, torch.zeros(1, 2, dtype=torch.float64), cfg)
    assert r.llc_se[0] < 0.06
    assert abs(r.llc[0] - 0.75) < 4 * r.llc_se[0] + 0.03, (r.llc[0], r.llc_se[0])


def test_negative_llc_is_kept_and_flagged():
    """Starting at a local maximum of the loss: draws have lower loss, λ̂ < 0, kept and flagged."""
    pot = FunctionPotential(lambda w: -(w ** 2).sum(1), n=10)
    cfg = LLCConfig(step_size=1e-3, localization=10.0, nbeta=10.0, batch_size=None, num_chains=4, num_draws=200,
                    num_burnin_steps=100)
    r = estimate_llc_potential(pot, torch.zeros(2, 3, dtype=torch.float64), cfg)
    assert (r.llc < 0).all() and r.negative.all()
    assert "negative llc: 2/2" in r.summary()
    assert r.to_frame()["negative"].all()


def test_trend_flag_on_non_equilibrated_chains():
    """Paper-like kernel far from equilibrium (relaxation 2/(εγ) = 2000 steps ≫ 200 draws) on
    a regular potential: the loss is still rising, the trend check must fire; with burn-in
    of 5 relaxation times (ε = 1e-4: 2/(εγ) = 200 steps) it must not."""
    pot = LinearRegressionPotential(n=200, d=10, seed=1)
    w = pot.mle().unsqueeze(0)
    slow = LLCConfig(step_size=1e-5, localization=100.0, nbeta=1000.0, batch_size=None, num_chains=4,
                     num_draws=200)
    r = estimate_llc_potential(pot, w, slow)
    assert r.trend_flag[0] and r.trend_z[0] > 0
    ok = LLCConfig(step_size=1e-4, localization=100.0, nbeta=1000.0, batch_size=None, num_chains=4,
                   num_draws=300, num_burnin_steps=1000)
    r2 = estimate_llc_potential(pot, w, ok)
    assert not r2.trend_flag[0], r2.trend_z


def test_result_object_frame_and_summary():
    spec = MLPSpec((2, 8, 2))
    ds = _moons(128)
    w = spec.init([0, 1, 2])
    cfg = LLCConfig(num_chains=3, num_draws=20, batch_size=32)
    r = estimate_llc(w, ds, spec=spec, config=cfg, model_ids=[10, 11, 12])
    assert r.loss_traces.shape == (3, 3, 20)
    assert r.llc_per_chain.shape == (3, 3)
    np.testing.assert_allclose(r.llc, r.llc_per_chain.mean(1))
    np.testing.assert_allclose(r.llc_std, r.llc_per_chain.std(1, ddof=1))
    np.testing.assert_allclose(r.llc_per_chain, r.nbeta * (r.loss_traces.mean(2) - r.init_loss[:, None]))
    assert r.nbeta == pytest.approx(32 / np.log(32))
    full = MLPPotential(spec, ds.x_train, ds.y_train)(w, None).numpy()
    np.testing.assert_allclose(r.init_loss, full, rtol=1e-6)
    df = r.to_frame()
    assert list(df["model_id"]) == [10, 11, 12]
    for col in ("llc", "llc_std", "n_diverged", "all_diverged", "negative", "trend_z", "trend_flag", "nbeta"):
        assert col in df
    assert len(r.to_frame(per_chain=True)) == 9
    s = r.summary()
    assert "nbeta=" in s and "B/log B" in s and "diverged chains: 0/9" in s
    assert r.settings()["nbeta_value"] == r.nbeta


def test_modules_with_dataloader_match_stacked_weights():
    """Users' own nn.Modules + DataLoader (functional_call + vmap) give the same draws as the
    MLPSpec path for the same weights and seeds (float32 round-off only)."""
    from torch.utils.data import DataLoader, TensorDataset

    spec = MLPSpec((2, 16, 2))
    ds = _moons(256)
    w = spec.init([5, 6])
    modules = [spec.to_module(w[k]) for k in range(2)]
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=64, shuffle=True)
    cfg = LLCConfig(step_size=1e-4, num_chains=2, num_draws=25, batch_size=64)
    a = estimate_llc(modules, loader, config=cfg)
    b = estimate_llc(w, ds, spec=spec, config=cfg)
    np.testing.assert_allclose(a.loss_traces, b.loss_traces, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.init_loss, b.init_loss, rtol=1e-5)


def test_ensemble_result_and_training_hook():
    """estimate_llc on an engine EnsembleResult; LLC along training via the engine hook."""
    from sgdbayes.engine import EnsembleConfig, train_ensemble

    cfg = EnsembleConfig(dataset="moons", dataset_options=dict(n=256, n_test=32), widths=(None, 16, None),
                         seeds=(3, 4, 5), steps=60, batch_size=64, lr=0.05, progress=False)
    llc_cfg = LLCConfig(step_size=1e-4, num_chains=2, num_draws=15, batch_size=64)
    hook = LLCTrainingHook(llc_cfg, every=20)
    res = train_ensemble(cfg, hooks=[hook.as_engine_hook()])
    table = res.hooks["llc"]
    assert sorted(table["step"].unique().tolist()) == [20, 40, 60]
    assert set(table["seed"]) == {3, 4, 5}
    assert np.isfinite(table["llc"]).all()
    mean, se, chain_se = hook.final(last=2)
    assert list(mean.index) == [3, 4, 5]
    tr = hook.llc_trace()
    np.testing.assert_allclose(mean.values, tr.iloc[-2:].mean().values)
    np.testing.assert_allclose(se.values, tr.iloc[-2:].std(ddof=1).values / np.sqrt(2))
    assert np.isfinite(chain_se.values).all()
    # the hook's last estimate equals a direct estimate at the final weights (same seed rule)
    from dataclasses import replace

    direct = estimate_llc(res, config=replace(llc_cfg, seed=llc_cfg.seed + 60))
    np.testing.assert_allclose(direct.llc, tr.loc[60].values, rtol=1e-4, atol=1e-4)
    assert list(direct.model_ids) == [3, 4, 5]
