"""Kernel, stream, batching-invariance, divergence, validation and diagnostics tests."""

import math

import numpy as np
import pytest
import torch

from sgdbayes.models import MLPSpec
from sgdbayes.sampling import (ChainStreams, DrawSchedule, FullLossTrace, FunctionPotential, LLCConfig, MLPPotential,
                               SGLDConfig, WeightTrace, build, chain_seeds, check_weights, estimate_llc_potential, ess,
                               run_chains, split_rhat, trend_test)


def _moons_xy(n=256, seed=0):
    from sgdbayes.data import load_dataset

    ds = load_dataset("moons", n=n, n_test=16, seed=seed)
    return ds.x_train, ds.y_train


def test_kernel_matches_devinterp_sgld_step_exactly():
    """Same weights, batches and noise: our update == devinterp.optim.sgld.SGLD.step
    (incl. nβ, localization, weight decay, noise_level), to float32 round-off."""
    import warnings

    from devinterp.optim.sgld import SGLD

    spec = MLPSpec((2, 8, 2))
    x, y = _moons_xy()
    w0 = spec.init([3])
    cfg = SGLDConfig(step_size=1e-3, nbeta=20.0, localization=5.0, weight_decay=0.1, noise_level=0.7)
    module = spec.to_module(w0[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = SGLD(module.parameters(), lr=cfg.step_size, nbeta=cfg.nbeta, localization=cfg.localization,
                   weight_decay=cfg.weight_decay, noise_level=cfg.noise_level)
    tr = build(MLPPotential(spec, x, y), cfg)
    state = tr.init(w0)
    g = torch.Generator().manual_seed(11)
    for step in range(6):
        idx = torch.arange(step * 32, step * 32 + 32).unsqueeze(0)
        # devinterp draws N(0, σ) per parameter tensor in order; we pass σ·ξ/σ = ξ
        g_state = g.get_state()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x[idx[0]]), y[idx[0]]).backward()
        opt.step(noise_generator=g)
        g.set_state(g_state)
        noise = torch.cat([torch.normal(0.0, cfg.noise_level, size=p.shape, generator=g).reshape(-1)
                           for p in module.parameters()]) / cfg.noise_level
        state = tr.update(state, idx, noise.unsqueeze(0))
        ours = state.w[0]
        theirs = spec.from_module(module)
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5), (step, (ours - theirs).abs().max())
    assert state.step == 6
    assert not torch.allclose(state.w, w0)


def test_streams_are_per_chain_and_batching_invariant():
    seeds_all = chain_seeds(0, [4, 9, 12], 2)
    seeds_one = chain_seeds(0, [9], 2)
    assert seeds_all[2:4] == seeds_one
    s_all = ChainStreams(seeds_all, n=100, batch_size=30, n_params=7)
    s_one = ChainStreams(seeds_one, n=100, batch_size=30, n_params=7)
    assert s_all.noise_chunk == s_one.noise_chunk == 8
    for _ in range(20):  # spans epoch boundaries (3 batches per epoch) and noise chunks (8 steps)
        assert torch.equal(s_all.next_batch()[2:4], s_one.next_batch())
        assert torch.equal(s_all.noise()[2:4], s_one.noise())
    # noise drawn a chunk at a time equals noise drawn step by step from the same generators
    a = ChainStreams(seeds_one, n=100, batch_size=30, n_params=7)
    b = ChainStreams(seeds_one, n=100, batch_size=30, n_params=7)
    chunks = torch.cat([a.draw_noise_chunk() for _ in range(3)], dim=1)
    steps = torch.stack([b.noise().clone() for _ in range(24)], dim=1)
    assert torch.equal(chunks, steps)
    assert not torch.equal(steps[:, 0], steps[:, 1])
    b = ChainStreams(seeds_one, n=100, batch_size=30, n_params=7)
    idx = torch.cat([b.next_batch() for _ in range(3)], dim=1)
    assert all(len(set(r.tolist())) == 90 for r in idx)  # without replacement within an epoch
    assert not torch.equal(idx[0], idx[1])  # chains differ


def test_batching_invariance_exact_on_elementwise_potential():
    """Chain c of model k: the same draws alone or batched with others. Noise and
    minibatches are bit-identical (test above); the arithmetic may differ in the last
    ulp (vectorized vs scalar tail loops), hence rtol 1e-12 in float64."""
    pot = FunctionPotential(lambda w: (w ** 4).sum(1) + 0.1 * w[:, 0] * w[:, 1], n=10)
    w = torch.tensor([[0.1, -0.2], [0.3, 0.0], [0.0, 0.5]], dtype=torch.float64)
    cfg = LLCConfig(step_size=1e-3, localization=1.0, nbeta=50.0, num_chains=3, num_draws=40, batch_size=None)
    full = estimate_llc_potential(pot, w, cfg, model_ids=[7, 8, 9])
    alone = estimate_llc_potential(pot, w[1:2], cfg, model_ids=[8])
    np.testing.assert_allclose(full.loss_traces[1], alone.loss_traces[0], rtol=1e-12, atol=0)
    assert not np.array_equal(full.loss_traces[1, 0], full.loss_traces[1, 1])


def test_batching_invariance_mlp():
    """MLP potential: same minibatches and noise; losses equal up to batched-GEMM round-off."""
    spec = MLPSpec((2, 16, 2))
    x, y = _moons_xy()
    w = spec.init([0, 1, 2])
    cfg = LLCConfig(step_size=1e-4, localization=100.0, num_chains=2, num_draws=30, batch_size=32)
    pot = MLPPotential(spec, x, y)
    full = estimate_llc_potential(pot, w, cfg, model_ids=[0, 1, 2])
    alone = estimate_llc_potential(pot, w[2:3], cfg, model_ids=[2])
    np.testing.assert_allclose(full.loss_traces[2], alone.loss_traces[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.llc_per_chain[2], alone.llc_per_chain[0], rtol=1e-4, atol=1e-5)


def test_schedule_counts_and_draw_positions():
    s = DrawSchedule(num_draws=5, num_burnin_steps=3, num_steps_bw_draws=2)
    assert s.num_steps == 13
    assert [i for i in range(s.num_steps) if s.is_draw(i)] == [4, 6, 8, 10, 12]


@pytest.mark.parametrize("kwargs,name", [
    (dict(step_size=0.0, nbeta=1.0), "step_size"),
    (dict(step_size=-1e-3, nbeta=1.0), "step_size"),
    (dict(step_size=float("nan"), nbeta=1.0), "step_size"),
    (dict(step_size=1e-3, nbeta=0.0), "nbeta"),
    (dict(step_size=1e-3, nbeta=1.0, localization=-1.0), "localization"),
    (dict(step_size=1e-3, nbeta=1.0, noise_level=0.0), "noise_level"),
])
def test_sgld_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SGLDConfig(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_draws=0), "num_draws"), (dict(num_chains=0), "num_chains"), (dict(step_size=0), "step_size"),
    (dict(num_burnin_steps=-1), "num_burnin_steps"), (dict(num_steps_bw_draws=0), "num_steps_bw_draws"),
    (dict(nbeta="wbic"), "nbeta"), (dict(nbeta=-2.0), "nbeta"), (dict(batch_size=0), "batch_size"),
    (dict(num_draws=2.5), "num_draws"),
])
def test_llc_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LLCConfig(**kwargs)


def test_bad_weights_and_shapes_rejected():
    spec = MLPSpec((2, 4, 2))
    x, y = _moons_xy()
    pot = MLPPotential(spec, x, y)
    w = spec.init([0, 1])
    bad = w.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="w_star.*non-finite"):
        estimate_llc_potential(pot, bad, LLCConfig(num_draws=2))
    with pytest.raises(ValueError, match="w_star"):
        estimate_llc_potential(pot, w[0], LLCConfig(num_draws=2))
    with pytest.raises(ValueError, match="model_ids"):
        estimate_llc_potential(pot, w, LLCConfig(num_draws=2), model_ids=[1])
    with pytest.raises(ValueError, match="y must be"):
        MLPPotential(spec, x, y[:-1])
    from sgdbayes.sampling import estimate_llc

    with pytest.raises(ValueError, match="columns"):
        estimate_llc(torch.zeros(2, spec.n_params + 1), (x, y), spec=spec)
    with pytest.raises(ValueError, match="config"):
        estimate_llc(w, (x, y), spec=spec, config=dict(step_size=1e-5))
    with pytest.raises(ValueError, match="backend"):
        estimate_llc(w, (x, y), spec=spec, backend="jax")
    with pytest.raises(ValueError):
        check_weights(torch.zeros(3, 0))


def test_divergent_chains_flagged_and_excluded():
    """Rows whose loss becomes non-finite are flagged, excluded from the mean, counted;
    a model with every chain diverged gets NaN with all_diverged=True (never averaged in)."""
    # potential finite for w1 > -0.5 else NaN; model 0 starts far from the cliff, model 1 next to it
    def f(w):
        out = (w ** 2).sum(1)
        return torch.where(w[:, 0] > -0.5, out, torch.full_like(out, float("nan")))

    pot = FunctionPotential(f, n=10)
    # model 0 fine; model 1 near the NaN boundary with big noise -> some chains diverge; model 2 -> all diverge
    w = torch.tensor([[1.0, 0.0], [-0.45, 0.0]], dtype=torch.float64)
    cfg = LLCConfig(step_size=0.05, localization=0.0, nbeta=0.01, num_chains=16, num_draws=50, batch_size=None,
                    noise_level=0.1)
    r = estimate_llc_potential(pot, w, cfg)
    assert not r.diverged[0].any()
    assert 0 < r.n_diverged[1] < 16, r.n_diverged
    assert np.isnan(r.llc_per_chain[1][r.diverged[1]]).all()
    np.testing.assert_allclose(r.llc[1], np.nanmean(r.llc_per_chain[1]))
    assert np.isfinite(r.llc).all()

    def g(w):  # finite for w1 > 0.5, or exactly at the origin (model 1's w*): every move is +inf
        out = (w ** 2).sum(1)
        ok = (w[:, 0] > 0.5) | (w == 0).all(1)
        return torch.where(ok, out, torch.full_like(out, float("inf")))

    r2 = estimate_llc_potential(FunctionPotential(g, n=10), torch.tensor([[1.0, 0.0], [0.0, 0.0]],
                                                                         dtype=torch.float64), cfg)
    assert r2.all_diverged.tolist() == [False, True]
    assert np.isnan(r2.llc[1]) and np.isfinite(r2.llc[0])
    df = r2.to_frame()
    assert df["all_diverged"].tolist() == [False, True]
    assert df["n_diverged"].iloc[1] == 16
    assert "ALL chains diverge" in r2.summary()


def test_ess_and_rhat_known_cases():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 2000))
    e = ess(iid)
    assert 0.85 * 8000 < e < 1.15 * 8000, e
    phi = 0.9
    ar = np.zeros((4, 4000))
    for t in range(1, 4000):
        ar[:, t] = phi * ar[:, t - 1] + rng.normal(size=4)
    expected = 16000 * (1 - phi) / (1 + phi)  # AR(1) ESS
    assert 0.7 * expected < ess(ar) < 1.3 * expected, (ess(ar), expected)
    assert split_rhat(iid) < 1.01
    assert split_rhat(iid, rank_normalize=False) < 1.01
    shifted = iid + np.array([0, 0, 0, 1.0])[:, None]
    assert split_rhat(shifted) > 1.05
    drifting = iid[:1] + np.linspace(0, 3, 2000)
    assert split_rhat(drifting) > 1.1  # one chain: halves disagree
    assert math.isnan(ess(np.array([1.0, np.nan, 2.0, 3.0, 4.0])))


def test_trend_test_detects_drift_not_noise():
    rng = np.random.default_rng(1)
    zs = [trend_test(rng.normal(size=400)).z for _ in range(200)]
    assert np.mean(np.abs(zs) > 3) < 0.03
    assert trend_test(rng.normal(size=400) + np.linspace(0, 2, 400)).z > 5


def test_fused_mlp_gradient_equals_autograd(mlp_kernel):
    spec = MLPSpec((2, 16, 8, 3))
    x, y = _moons_xy()
    w = spec.init([0, 1, 2, 3]).double()
    pot = MLPPotential(spec, x.double(), y)
    idx = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(k))[:32] for k in range(4)])
    for ii in (idx, None):
        loss, g = pot.loss_and_grad(w, ii)
        wg = w.clone().requires_grad_(True)
        ref = pot(wg, ii)
        (gr,) = torch.autograd.grad(ref.sum(), wg)
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-12)


def test_row_sharding_over_threads_does_not_change_draws(mlp_kernel):
    """run_chains(workers=3) (rows split over Python threads) == workers=1, incl. recorded
    weights and divergence bookkeeping, up to batched-GEMM round-off."""
    spec = MLPSpec((2, 16, 2))
    x, y = _moons_xy()
    pot = MLPPotential(spec, x, y)
    w0 = spec.init(list(range(7)))
    kern = SGLDConfig(step_size=1e-4, nbeta=20.0, localization=100.0)
    sched = DrawSchedule(num_draws=12, num_burnin_steps=5, num_steps_bw_draws=2)
    runs = []
    threads = torch.get_num_threads()
    try:
        # one torch thread leaves a core spare: workers=1 then draws the next chunk of noise in
        # a background thread while the current one is used (the other code path)
        torch.set_num_threads(1)
        for workers in (1, 3):
            streams = ChainStreams(chain_seeds(1, range(7), 1), n=x.shape[0], batch_size=32,
                                   n_params=spec.n_params)
            runs.append(run_chains(pot, w0, kern, sched, streams, observers=[WeightTrace(), FullLossTrace()],
                                   workers=workers))
    finally:
        torch.set_num_threads(threads)
    a, b = runs
    torch.testing.assert_close(a.losses, b.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.full_losses, b.full_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-5, atol=1e-6)
    assert not a.diverged.any() and not b.diverged.any()


class _KernelOnlyMLPPotential(MLPPotential):
    """The same potential without its in-place stepper: run_chains uses the public kernel."""

    def stepper(self, coefficients, w0, centers):
        return None


@pytest.mark.parametrize("batch_size", [32, None])
def test_mlp_inplace_stepper_equals_public_kernel(batch_size, mlp_kernel):
    """run_chains on MLPPotential (in-place blocked stepper) gives the numbers of the public
    build()/update() kernel on row-layout weights: draws, full-data losses, recorded weights,
    with weight decay and a centre different from the start."""
    spec = MLPSpec((2, 8, 6, 3))
    x, y = _moons_xy(n=96)
    y = y % 3
    x = x.double()
    w0 = spec.init(list(range(5))).double()
    centers = w0 + 0.01 * torch.randn(w0.shape, generator=torch.Generator().manual_seed(0), dtype=w0.dtype)
    kern = SGLDConfig(step_size=1e-3, nbeta=30.0, localization=50.0, weight_decay=0.1)
    sched = DrawSchedule(num_draws=10, num_burnin_steps=3, num_steps_bw_draws=2)
    runs = []
    for cls in (MLPPotential, _KernelOnlyMLPPotential):
        pot = cls(spec, x, y)
        streams = ChainStreams(chain_seeds(2, range(5), 1), n=96, batch_size=batch_size, n_params=spec.n_params,
                               dtype=torch.float64)
        runs.append(run_chains(pot, w0, kern, sched, streams, observers=[WeightTrace(), FullLossTrace()],
                               centers=centers, workers=1))
    a, b = runs
    torch.testing.assert_close(a.losses, b.losses, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(a.full_losses, b.full_losses, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-12, atol=1e-13)
    assert not a.diverged.any()


def test_mlp_inplace_stepper_divergence_matches_public_kernel(mlp_kernel):
    """A step size far too large: the in-place stepper flags the same chains at the same steps
    as the public kernel and resets them to their centres (no NaN reaches later draws)."""
    spec = MLPSpec((2, 8, 2))
    x, y = _moons_xy(n=64)
    w0 = spec.init(list(range(6)))
    kern = SGLDConfig(step_size=3.0, nbeta=500.0, localization=0.0)
    sched = DrawSchedule(num_draws=60)
    runs = []
    for cls in (MLPPotential, _KernelOnlyMLPPotential):
        streams = ChainStreams(chain_seeds(0, range(6), 1), n=64, batch_size=16, n_params=spec.n_params)
        runs.append(run_chains(cls(spec, x, y), w0, kern, sched, streams, workers=1))
    a, b = runs
    assert a.diverged.any()
    assert torch.equal(a.diverged, b.diverged)
    assert torch.equal(a.diverged_step, b.diverged_step)
    for run in runs:
        for r in torch.nonzero(run.diverged).flatten().tolist():
            assert torch.isnan(run.losses[r, run.diverged_step[r]:]).all()
