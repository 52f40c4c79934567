"""Diffusion fits (eq 17): interval coverage on simulated curves with known truth."""
import numpy as np
import pytest

from sgdbayes.stats.diffusion import fit_diffusion, fit_loglog, final_llc, log_grid, spectral_dimension
from sgdbayes.stats.simulate import simulate_curve, simulate_two_segment

TRUE_ALPHA = 0.4


def _coverage(methods, n_curves=200, phi_max=0.9, seed=20240601, phi=None):
    rng = np.random.default_rng(seed)
    hits = {m: 0 for m in methods}
    for i in range(n_curves):
        p = rng.uniform(0.0, phi_max) if phi is None else phi
        t, R = simulate_curve(alpha=TRUE_ALPHA, c=0.3, phi=p, sigma=0.05, n_points=60, seed=rng)
        for m in methods:
            lo, hi = fit_loglog(np.log(t), np.log(R), method=m, seed=i).conf_int(0.05)
            hits[m] += lo <= TRUE_ALPHA <= hi
    return {m: h / n_curves for m, h in hits.items()}


def test_alpha_interval_coverage_holds_where_ols_and_hac_do_not():
    """200 curves, AR(1) noise in log R with phi ~ U(0, 0.9): ours >= 90 %, OLS and HAC well below."""
    cov = _coverage(["ar1-boot", "ols", "hac"])
    print("coverage phi~U(0,0.9):", cov)
    assert cov["ar1-boot"] >= 0.90
    assert cov["ols"] <= 0.85
    assert cov["hac"] <= 0.88
    assert cov["ar1-boot"] - cov["ols"] >= 0.10


def test_alpha_interval_coverage_at_phi_09():
    """The hardest case, phi = 0.9 for every curve."""
    cov = _coverage(["ar1-boot", "ols"], phi=0.9, seed=7)
    print("coverage phi=0.9:", cov)
    assert cov["ar1-boot"] >= 0.88
    assert cov["ols"] <= 0.5


def test_d_s_delta_method_coverage_with_noisy_lambda():
    """se(d_s)^2 = (2a)^2 se(l)^2 + (2l)^2 se(a)^2: the interval covers 2 lambda alpha >= 90 %."""
    rng = np.random.default_rng(11)
    n, hits, hits_no_lam = 200, 0, 0
    for i in range(n):
        lam_true = rng.uniform(5, 40)
        lam_se = 0.15 * lam_true  # noisy lambda: 15 % relative error
        lam_hat = lam_true + rng.normal(0, lam_se)
        t, R = simulate_curve(alpha=TRUE_ALPHA, phi=rng.uniform(0, 0.9), sigma=0.05, seed=rng)
        f = fit_loglog(np.log(t), np.log(R), seed=i)
        truth = 2 * lam_true * TRUE_ALPHA
        _, _, (lo, hi) = spectral_dimension(f.alpha, f.se_alpha, lam_hat, lam_se)
        hits += lo <= truth <= hi
        _, _, (lo0, hi0) = spectral_dimension(f.alpha, f.se_alpha, lam_hat, 0.0)
        hits_no_lam += lo0 <= truth <= hi0
    print("d_s coverage:", hits / n, "ignoring se(lambda):", hits_no_lam / n)
    assert hits / n >= 0.90
    assert hits_no_lam / n < hits / n - 0.1  # lambda's se matters


def test_spectral_dimension_formula():
    d, se, (lo, hi) = spectral_dimension(0.3, 0.02, 20.0, 1.0)
    assert d == pytest.approx(12.0)
    assert se == pytest.approx(np.sqrt((0.6 * 1.0) ** 2 + (40 * 0.02) ** 2))
    assert lo < d < hi
    with pytest.raises(ValueError):
        spectral_dimension(np.nan, 0.1, 1.0, 0.1)


def test_crossover_found_and_late_slope_recovered():
    t, R = simulate_two_segment(alpha_early=0.8, alpha_late=0.3, t_c=100, phi=0.5, sigma=0.03, seed=3)
    f = fit_diffusion(t, R, llc=20.0, llc_se=1.0, seed=0)
    cx = f.crossover
    assert cx is not None and cx.significant
    assert cx.t_c_ci[0] <= 100 <= cx.t_c_ci[1]
    assert 50 < cx.t_c < 200
    lo, hi = f.late.conf_int()
    assert lo <= 0.3 <= hi
    assert f.alpha > 0.45  # the whole-range fit mixes in the super-diffusive phase
    assert f.d_walk == pytest.approx(1 / f.alpha)
    assert f.d_s == pytest.approx(2 * 20.0 * f.alpha)
    s = f.summary()
    assert "eq 17" in s and "crossover" in s
    ci = f.conf_int()
    assert set(ci) == {"alpha", "alpha_late", "d_s", "d_s_late"}
    row = f.to_row()
    assert row["t_c_lo"] <= row["t_c"] <= row["t_c_hi"]


def test_late_window_fraction_and_none():
    t, R = simulate_curve(alpha=0.35, phi=0.3, seed=1, n_points=80)
    f = fit_diffusion(t, R, late_window=0.5)
    assert f.crossover is None and f.late is not None
    assert f.late.t_min >= np.sqrt(t.max()) * 0.8
    f2 = fit_diffusion(t, R, late_window=None)
    assert f2.late is None and f2.to_row()["late_alpha"] is None


def test_log_grid_evenly_spaced():
    steps = np.arange(1, 10001)
    idx = log_grid(steps, 64)
    lt = np.log(steps[idx])
    assert len(idx) <= 64 and idx[0] == 0 and idx[-1] == 9999
    gaps = np.diff(lt)[10:]
    assert gaps.max() / gaps.min() < 1.5  # evenly spaced in log t where the grid allows


def test_input_validation_and_zero_displacement():
    t = np.arange(1, 101, dtype=float)
    R = t ** 0.4
    with pytest.raises(ValueError, match="> 0"):
        fit_diffusion(np.r_[0.0, t[1:]], R)
    with pytest.raises(ValueError, match=">= 0"):
        fit_diffusion(t, -R)
    R0 = R.copy()
    R0[:3] = 0
    f = fit_diffusion(t, R0, late_window=None)
    assert f.n_dropped_zero == 3 and "dropped" in f.notes[0]
    with pytest.raises(ValueError):
        fit_loglog(np.log(t), np.log(R), method="bogus")


def test_exact_power_law_and_determinism():
    t = np.geomspace(1, 1e4, 50).round()
    t = np.unique(t)
    R = 2.0 * t ** 0.37
    f = fit_loglog(np.log(t), np.log(R))
    assert f.alpha == pytest.approx(0.37, abs=1e-8)
    t2, R2 = simulate_curve(seed=5)
    a = fit_diffusion(t2, R2, seed=1).to_row()
    b = fit_diffusion(t2, R2, seed=1).to_row()
    assert a == b


def test_final_llc():
    v = [np.nan, 1.0, np.nan] + list(range(20))
    m, se, n = final_llc(v)
    assert n == 10 and m == pytest.approx(np.mean(range(10, 20)))
    assert se == pytest.approx(np.std(range(10, 20), ddof=1) / np.sqrt(10))
    with pytest.raises(ValueError):
        final_llc([np.nan])


@pytest.mark.slow
def test_crossover_interval_coverage():
    """t_c bootstrap interval coverage on 200 two-segment curves (measured ~0.86)."""
    rng = np.random.default_rng(5)
    hits = late = 0
    for i in range(200):
        t, R = simulate_two_segment(phi=rng.uniform(0, 0.9), sigma=0.05, seed=rng)
        f = fit_diffusion(t, R, seed=i)
        hits += f.crossover.t_c_ci[0] <= 100 <= f.crossover.t_c_ci[1]
        lo, hi = f.late.conf_int()
        late += lo <= 0.3 <= hi
    print("t_c coverage", hits / 200, "late alpha coverage", late / 200)
    assert hits / 200 >= 0.8
    assert late / 200 >= 0.9
