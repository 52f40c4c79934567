"""Issue 16: HMC recovers known moments, MALA acceptance per chain, per-chain trend flags, SGLD
run to a convergence target (docs/estimates.md)."""
import math
import warnings

import numpy as np
import pytest
import torch

from sgdbayes.sampling import (ConvergenceTarget, HMCConfig, LLCConfig, PosteriorConfig, estimate_llc_potential,
                               mala_log_acceptance, sample_hmc, sample_posterior_until)
from sgdbayes.sampling.llc_types import finalize
from sgdbayes.sampling.potentials import FunctionPotential
from sgdbayes.sampling.sgld import SGLDConfig

SCALES = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)


def _gauss(w):
    return 0.5 * (w / SCALES).square().sum(1)


def _banana(w, b=0.5):
    # w1 ~ N(0, 1), w2 | w1 ~ N(b w1^2, 1): E w2 = b, Var w2 = 1 + 2 b^2
    return 0.5 * w[:, 0].square() + 0.5 * (w[:, 1] - b * w[:, 0].square()).square()


def _pooled(r):
    return r.samples.reshape(-1, r.samples.shape[-1]).double().numpy()


def test_hmc_recovers_gaussian_moments():
    cfg = HMCConfig(num_warmup=300, num_samples=600, num_leapfrog=8, step_size=0.1, seed=3)
    w0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    r = sample_hmc(w0, FunctionPotential(_gauss, n=1), config=cfg, progress=False)
    s = _pooled(r)
    se = SCALES.numpy() / math.sqrt(r.ess)            # a generous Monte-Carlo scale
    assert np.all(np.abs(s.mean(0)) < 5 * se)
    assert np.allclose(s.std(0), SCALES.numpy(), rtol=0.12)
    assert 0.6 < r.acceptance_rate < 0.95            # dual averaging towards target 0.8
    assert r.n_divergent == 0 and r.converged(max_rhat=1.05, min_ess=200)


def test_hmc_recovers_banana_moments():
    cfg = HMCConfig(num_warmup=400, num_samples=1000, num_leapfrog=12, step_size=0.1, seed=1)
    w0 = torch.zeros(4, 2, dtype=torch.float64)
    r = sample_hmc(w0, FunctionPotential(_banana, n=1), config=cfg, progress=False)
    s = _pooled(r)
    assert abs(s[:, 0].mean()) < 0.15 and abs(s[:, 0].var() - 1.0) < 0.2
    assert abs(s[:, 1].mean() - 0.5) < 0.15 and abs(s[:, 1].var() - 1.5) < 0.35
    assert r.n_divergent <= 0.01 * r.divergent.size   # the banana's curved tail may diverge rarely


ANISO = torch.logspace(-1, 1, 10, dtype=torch.float64)   # standard deviations 0.1 .. 10 (100x)


def _aniso(w):
    return 0.5 * (w / ANISO).square().sum(1)


def _aniso_run(adapt):
    cfg = HMCConfig(num_warmup=400, num_samples=400, num_leapfrog=16, step_size=0.05, adapt_metric=adapt, seed=4)
    w0 = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return sample_hmc(w0, FunctionPotential(_aniso, n=1), config=cfg, workers=1, progress=False)


def test_hmc_adapted_metric_recovers_anisotropic_variances():
    from sgdbayes.sampling.diagnostics import ess

    adapted, unit = _aniso_run(True), _aniso_run(False)
    var = ANISO.square().numpy()
    # the adapted inverse metric is each chain's variance estimate from its last warm-up window (~100
    # autocorrelated draws): min 0.01, max 100 within a factor 2 (a unit metric is off by 100x)
    for col, v in ((0, var[0]), (2, var[-1])):
        assert np.all(np.abs(np.log(adapted.metric_range[:, col] / v)) < math.log(2.0)), adapted.metric_range
    assert np.allclose(unit.metric_range, 1.0)
    s = _pooled(adapted)
    assert np.allclose(s.std(0), ANISO.numpy(), rtol=0.15)
    # the widest coordinate: a unit metric must take steps fit for the narrowest (0.1) and
    # random-walks over the widest (10); the adapted metric moves all of them alike
    ess_wide = [ess(r.samples[:, :, -1].double().numpy()) for r in (adapted, unit)]
    assert ess_wide[0] > 10 * ess_wide[1], ess_wide
    assert adapted.converged(max_rhat=1.02, min_ess=400) and not unit.converged(max_rhat=1.02, min_ess=400)


def test_hmc_chain_does_not_depend_on_the_batch():
    cfg = HMCConfig(num_warmup=40, num_samples=20, num_leapfrog=4, step_size=0.1, seed=2)
    w0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pot = FunctionPotential(_banana, n=1)
    both = sample_hmc(w0, pot, config=cfg, start_ids=[0, 1, 2], workers=1, progress=False)
    alone = sample_hmc(w0[1:2], pot, config=cfg, start_ids=[1], workers=1, progress=False)
    assert np.allclose(both.loss_traces[1], alone.loss_traces[0], rtol=1e-10, atol=1e-12)


def test_mala_log_acceptance_matches_devinterp():
    mala = pytest.importorskip("devinterp.slt.mala")
    g = torch.Generator().manual_seed(0)
    w0, w1, c = (torch.randn(1, 5, dtype=torch.float64, generator=g) for _ in range(3))
    k = SGLDConfig(step_size=0.01, localization=3.0, nbeta=7.0)

    def U_G(w):
        loss, grad = (w.square().sum(1) * 0.3), 0.6 * w
        return loss, grad, k.nbeta * loss + 0.5 * k.localization * (w - c).square().sum(1), \
            k.nbeta * grad + k.localization * (w - c)

    l0, g0, u0, G0 = U_G(w0)
    l1, g1, u1, G1 = U_G(w1)
    ours = float(mala_log_acceptance(w0, l0, g0, w1, l1, g1, c, k).clamp(max=0).exp())
    ref = float(mala.mala_acceptance_probability(w0[0], G0[0], u0[0], w1[0], G1[0], u1[0], k.step_size))
    assert ours == pytest.approx(ref, rel=1e-9)


def _quad_llc(eps):
    pot = FunctionPotential(lambda w: 0.5 * w.square().sum(1), n=100)
    cfg = LLCConfig(step_size=eps, localization=1.0, nbeta=10.0, num_chains=3, num_draws=60, num_burnin_steps=50,
                    batch_size=None, mala_transitions=20, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the long-step runs warn (tested through advice())
        return estimate_llc_potential(pot, torch.zeros(2, 4, dtype=torch.float64), cfg)


def test_mala_acceptance_per_chain_near_one_for_tiny_steps_and_falls_with_the_step():
    accs = [_quad_llc(eps) for eps in (1e-4, 1e-2, 1e-1)]
    m = [float(np.nanmean(r.mala_chain)) for r in accs]
    assert accs[0].mala_chain.shape == (2, 3) and np.isfinite(accs[0].mala_chain).all()
    assert m[0] > 0.99
    assert m[0] > m[1] > m[2]
    assert accs[2].mala_flag.any()                # far below target 0.9 +- 0.1
    assert any("lower step_size" in a for a in accs[2].advice())
    assert "mala_accept" in accs[0].to_frame().columns


class _Regression:
    """Least squares on 200 points: the minibatch loss varies from batch to batch."""

    def __init__(self):
        from sgdbayes.sampling import BasePotential

        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(200, 3, dtype=torch.float64, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(200, dtype=torch.float64,
                                                                                             generator=g)
        outer = self

        class Pot(BasePotential):
            n, n_params = 200, 3

            def __call__(self, w, idx):
                if idx is None:
                    return 0.5 * (w @ outer.x.T - outer.y).square().mean(-1)
                r = (outer.x[idx] * w[:, None, :]).sum(-1)             # [M, B]
                return 0.5 * (r - outer.y[idx]).square().mean(-1)

        self.pot = Pot()
        self.w_star = torch.linalg.lstsq(self.x, self.y).solution[None]


def _accept(reg, eps, batch, mode):
    cfg = LLCConfig(step_size=eps, localization=10.0, nbeta=50.0, num_chains=2, num_draws=80, batch_size=batch,
                    mala_transitions=40, mala_batch=mode, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimate_llc_potential(reg.pot, reg.w_star, cfg)


def test_mala_acceptance_on_the_steps_own_batch_measures_discretization_only():
    """With minibatches devinterp's measure (each end on its own step's batch) keeps the
    batch-to-batch noise nβ (L_B(w) - L_B'(w')) as ε -> 0; on the step's own batch the acceptance
    tends to 1. Full batch: the two are the same number. The draws never depend on the measure."""
    reg = _Regression()
    same = [float(np.nanmean(_accept(reg, e, 10, "same").mala_chain)) for e in (1e-3, 1e-7)]
    dev = [float(np.nanmean(_accept(reg, e, 10, "devinterp").mala_chain)) for e in (1e-3, 1e-7)]
    assert same[1] > 0.999 and same[0] < same[1]
    assert dev[1] < 0.95 and abs(dev[1] - dev[0]) < 0.1       # a floor that a smaller step does not lift
    a, b = _accept(reg, 1e-3, None, "same"), _accept(reg, 1e-3, None, "devinterp")
    np.testing.assert_array_equal(a.mala_chain, b.mala_chain)
    np.testing.assert_array_equal(_accept(reg, 1e-3, 10, "same").loss_traces,
                                  _accept(reg, 1e-3, 10, "devinterp").loss_traces)
    with pytest.raises(ValueError, match="mala_batch"):
        LLCConfig(mala_batch="other")


def test_trend_check_per_chain_flags_opposite_drifts_the_sum_misses():
    rng = np.random.default_rng(0)
    D = 400
    ramp = np.linspace(-1, 1, D)
    losses = rng.normal(size=(1, 2, D)) * 0.1
    losses[0, 0] += 0.2 * ramp       # rising
    losses[0, 1] -= 0.2 * ramp       # falling
    r = finalize([0], losses + 1.0, np.array([1.0]), np.zeros((1, 2), bool), 10.0, 100,
                 LLCConfig(num_chains=2), "batched", 0.0)
    assert abs(r.trend_z[0]) < 1.0                  # Stouffer: the drifts cancel
    assert r.trend_flag[0] and r.trend_flag_chain[0].all()
    adv = " ".join(r.advice())
    assert "num_burnin_steps" in adv and "localization" in adv
    flat = finalize([0], rng.normal(size=(1, 2, D)) * 0.1 + 1.0, np.array([1.0]), np.zeros((1, 2), bool), 10.0, 100,
                    LLCConfig(num_chains=2), "batched", 0.0)
    assert not flat.trend_flag[0]


def _gauss_pot():
    return FunctionPotential(lambda w: 0.5 * w.square().sum(1) / 100.0, n=100)   # U = |w|^2 / 2


def test_sgld_to_target_converges_and_says_so():
    cfg = PosteriorConfig(step_size=0.2, num_burnin_steps=20, num_steps_bw_samples=2, batch_size=None, record="batch",
                          keep_samples=False)
    tgt = ConvergenceTarget(max_rhat=1.05, min_ess=200, block_samples=200, max_samples=4000)
    w0 = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    r = sample_posterior_until(w0, _gauss_pot(), config=cfg, target=tgt, progress=False)
    assert r.stop_reason.startswith("converged")
    assert r.rhat <= 1.05 and r.ess >= 200
    assert r.history["samples"].iloc[-1] < 4000 and len(r.history) >= 1
    assert "stopped: converged" in r.summary()


def test_sgld_to_target_stops_at_the_budget_and_says_where():
    cfg = PosteriorConfig(step_size=0.2, num_burnin_steps=0, num_steps_bw_samples=1, batch_size=None, record="batch",
                          keep_samples=False)
    tgt = ConvergenceTarget(max_rhat=1.0001, min_ess=1e6, block_samples=50, max_samples=150)
    r = sample_posterior_until(torch.zeros(2, 2, dtype=torch.float64), _gauss_pot(), config=cfg, target=tgt,
                               progress=False)
    assert r.stop_reason.startswith("budget spent: 150 samples")
    assert list(r.history["samples"]) == [50, 100, 150]


def test_sgld_blocks_continue_one_long_run_exactly():
    cfg = PosteriorConfig(step_size=0.1, num_burnin_steps=5, num_steps_bw_samples=3, batch_size=10, record="batch",
                          keep_samples=False)
    pot = FunctionPotential(lambda w: 0.5 * w.square().sum(1) / 100.0, n=100)
    w0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    runs = [sample_posterior_until(w0, pot, config=cfg, target=ConvergenceTarget(min_ess=1e9, block_samples=b,
                                                                                 max_samples=120, discard=0.0),
                                   progress=False) for b in (40, 120)]
    assert np.allclose(runs[0].loss_traces, runs[1].loss_traces, rtol=1e-12, atol=1e-14)


def test_llc_result_round_trips_the_new_checks():
    from sgdbayes.sampling import LLCResult

    r = _quad_llc(1e-2)
    back = LLCResult.from_dict(r.to_dict())
    assert np.allclose(back.mala_chain, r.mala_chain, equal_nan=True)
    assert np.allclose(back.trend_z_chain, r.trend_z_chain, equal_nan=True)
    assert "MALA acceptance (target 0.9" in r.summary()
