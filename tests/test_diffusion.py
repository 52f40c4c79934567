"""Diffusion fits (eq 17): estimates, intervals, the result vocabulary, unfit runs."""
import json

import numpy as np
import pandas as pd
import pytest

from sgdbayes.stats import ar_errors as ae
from sgdbayes.stats.crossover import fit_crossover
from sgdbayes.stats.diffusion import (DiffusionFit, UnfitRun, final_llc, fit_diffusion, fit_loglog, log_grid,
                                      slope_batch, spectral_dimension, welch_df)
from sgdbayes.stats.simulate import car_curves, design_steps, simulate_curve, simulate_two_segment

TRUE_ALPHA = 0.4


def _coverage(methods, n_curves=120, phi_max=0.9, seed=20240601, phi=None):
    rng = np.random.default_rng(seed)
    hits = {m: 0 for m in methods}
    for i in range(n_curves):
        p = rng.uniform(0.0, phi_max) if phi is None else phi
        t, R = simulate_curve(alpha=TRUE_ALPHA, c=0.3, phi=p, sigma=0.05, n_points=60, seed=rng)
        for m in methods:
            lo, hi = fit_loglog(np.log(t), np.log(R), method=m, seed=i).conf_int(0.95).loc["alpha"]
            hits[m] += lo <= TRUE_ALPHA <= hi
    return {m: h / n_curves for m, h in hits.items()}


def test_alpha_interval_coverage_holds_where_ols_and_hac_do_not():
    """120 curves, AR(1) noise in log R with phi ~ U(0, 0.9): ours near 0.95, OLS and HAC well below."""
    cov = _coverage(["ar1-boot", "ols", "hac"])
    print("coverage phi~U(0,0.9):", cov)
    assert 0.91 <= cov["ar1-boot"] <= 0.99
    assert cov["ols"] <= 0.85
    assert cov["hac"] <= 0.88


def test_slope_batch_equals_one_fit_at_a_time():
    """The vectorised path (used by the coverage suite) gives each curve the numbers fit_loglog gives it."""
    t = design_steps("log+regular", 300)
    idx = log_grid(t, 64)
    x = np.log(t[idx])
    Y = car_curves(t, 0.4 * np.log(t), 0.9, 0.05, 6, "record", seed=3)[:, idx]
    b = slope_batch(x, idx, Y)
    for i in range(Y.shape[0]):
        f = fit_loglog(x, Y[i], records=idx)
        assert f.alpha == pytest.approx(b["alpha"][i], rel=1e-12)
        assert f.alpha_se == pytest.approx(b["alpha_se"][i], rel=1e-12)
        assert f.df == pytest.approx(b["df"][i], rel=1e-12)
        assert f.clock == b["clock"][i]
    # a curve's result does not depend on which other curves share the batch (up to BLAS round-off)
    b2 = slope_batch(x, idx, Y[[4, 1]])
    assert b2["alpha_se"][1] == pytest.approx(b["alpha_se"][1], rel=1e-10)
    assert b2["alpha"][0] == pytest.approx(b["alpha"][4], rel=1e-10)


def test_clock_is_chosen_by_likelihood():
    """Noise AR(1) per logged record on a log+regular grid: the record clock wins; OU in log t: log t wins."""
    t = design_steps("log+regular", 300)
    idx = log_grid(t, 64)
    x = np.log(t[idx])
    picks = {}
    for clock in ("record", "log t"):
        Y = car_curves(t, 0.4 * np.log(t), 0.9, 0.05, 40, clock, seed=5)[:, idx]
        picks[clock] = np.mean(np.array(slope_batch(x, idx, Y)["clock"]) == clock)
    assert picks["record"] > 0.8 and picks["log t"] > 0.8


def test_calibration_table_is_pure_and_widens_with_rho():
    x = np.linspace(0, 9, 40)
    g = ae.clock_gaps(x, np.arange(40))["log t"]
    s1, nu1, up1 = ae.critical_value(x, g, np.array([0.0, 0.9]), 0.95)
    s2, nu2, up2 = ae.critical_value(x, g, np.array([0.0, 0.9]), 0.95)
    np.testing.assert_array_equal(s1, s2)
    assert up1[1] > up1[0] and nu1[1] < nu1[0]
    q = s1 * np.array([ae.t_quantile(0.95, v) for v in nu1])
    assert q[1] > q[0] > 1.9


def test_d_s_interval_uses_welch_satterthwaite_df():
    """lambda = mean of 10 estimates (se on 9 df) dominating se(d_s): t_9-like quantile, not 1.96."""
    d, se, (lo, hi) = spectral_dimension(0.3, 1e-6, 20.0, 1.0, alpha_df=50, llc_df=9)
    assert d == pytest.approx(12.0)
    assert (hi - d) / se == pytest.approx(2.262, abs=2e-3)
    _, _, (lo0, hi0) = spectral_dimension(0.3, 1e-6, 20.0, 1.0)
    assert (hi0 - d) / se == pytest.approx(1.96, abs=1e-3)
    assert welch_df(1.0, 9, 1.0, 9) == pytest.approx(18.0)
    assert welch_df(1.0, None, 0.0, 5) == float("inf")


def test_d_s_coverage_with_noisy_lambda():
    """d_s = 2 lambda alpha with lambda the mean of 10 noisy estimates (20 % each): covers ~0.95
    (the full check is in tests/test_coverage.py; this one runs the public fit_diffusion path)."""
    rng = np.random.default_rng(11)
    n, hits = 100, 0
    t = design_steps("log", 64)
    Y = car_curves(t, TRUE_ALPHA * np.log(t), 0.5, 0.05, n, seed=rng)
    for i in range(n):
        est = 20.0 * (1 + 0.2 * rng.standard_normal(10))
        f = fit_diffusion(t, np.exp(Y[i]), llc=est.mean(), llc_se=est.std(ddof=1) / np.sqrt(10), llc_df=9,
                          late_window=None)
        lo, hi = f.conf_int().loc["d_s"]
        hits += lo <= 2 * 20.0 * TRUE_ALPHA <= hi
    assert 0.9 <= hits / n <= 0.99


def test_spectral_dimension_formula():
    d, se, (lo, hi) = spectral_dimension(0.3, 0.02, 20.0, 1.0)
    assert d == pytest.approx(12.0)
    assert se == pytest.approx(np.sqrt((0.6 * 1.0) ** 2 + (40 * 0.02) ** 2))
    assert lo < d < hi
    with pytest.raises(ValueError):
        spectral_dimension(np.nan, 0.1, 1.0, 0.1)
    with pytest.raises(ValueError, match="level"):
        spectral_dimension(0.3, 0.1, 1.0, 0.1, level=95)


def test_crossover_found_and_late_slope_recovered():
    t, R = simulate_two_segment(alpha_early=0.8, alpha_late=0.3, t_c=100, phi=0.5, sigma=0.03, seed=3)
    f = fit_diffusion(t, R, llc=20.0, llc_se=1.0, seed=0)
    cx = f.crossover
    assert cx is not None and cx.significant
    lo, hi = cx.conf_int().loc["t_c"]
    assert lo <= 100 <= hi and lo <= cx.t_c <= hi
    assert 50 < cx.t_c < 200
    lo, hi = f.late.conf_int().loc["alpha"]
    assert lo <= 0.3 <= hi
    assert f.alpha > 0.45  # the whole-range fit mixes in the super-diffusive phase
    assert f.d_walk == pytest.approx(1 / f.alpha)
    assert f.d_s == pytest.approx(2 * 20.0 * f.alpha)
    s = f.summary()
    assert "eq 17" in s and "crossover" in s
    ci = f.conf_int()
    assert list(ci.columns) == ["ci_low", "ci_high"]
    assert list(ci.index) == ["alpha", "d_s", "alpha_late", "d_s_late", "t_c"]
    row = f.to_row()
    assert row["t_c_lo"] <= row["t_c"] <= row["t_c_hi"]
    # intervals at another coverage: narrower at 0.8, wider at 0.99
    w = {lv: f.conf_int(lv).diff(axis=1)["ci_high"] for lv in (0.8, 0.95, 0.99)}
    assert (w[0.8] < w[0.95]).all() and (w[0.95] < w[0.99]).all()
    d95 = cx.conf_int(0.95).loc["delta"]
    assert d95["ci_high"] < 0


def test_result_round_trip_and_vocabulary():
    t, R = simulate_two_segment(seed=4)
    f = fit_diffusion(t, R, llc=20.0, llc_se=1.0, llc_df=9)
    g = DiffusionFit.from_dict(json.loads(json.dumps(f.to_dict())))
    assert g.to_row() == f.to_row()
    pd.testing.assert_frame_equal(g.estimates(), f.estimates())
    est = f.estimates()
    assert list(est.columns) == ["estimate", "se", "ci_low", "ci_high", "pvalue"]
    assert est.loc["alpha", "se"] == f.alpha_se == f.whole.alpha_se
    assert est.loc["alpha", "pvalue"] == pytest.approx(f.pvalue_subdiffusive())
    with pytest.raises(ValueError, match="level"):
        f.conf_int(95)


def test_to_row_keys_are_the_runs_csv_columns():
    t, R = simulate_two_segment(seed=4)
    row = fit_diffusion(t, R, llc=20.0, llc_se=1.0).to_row()
    expected = ["n_points", "t_min", "t_max", "alpha", "alpha_se", "alpha_lo", "alpha_hi", "alpha_df", "intercept",
                "r2", "ar1_rho", "method", "d_walk", "p_subdiffusive", "llc", "llc_se", "d_s", "d_s_se", "d_s_lo",
                "d_s_hi", "n_dropped_zero", "t_c", "t_c_lo", "t_c_hi", "alpha_early", "crossover_significant",
                "late_window", "late_t_start", "late_n_points", "late_alpha", "late_alpha_se", "late_alpha_df",
                "late_alpha_lo", "late_alpha_hi", "late_r2", "late_d_walk", "late_p_subdiffusive", "late_d_s",
                "late_d_s_se", "late_d_s_lo", "late_d_s_hi", "notes", "interval_flags"]
    assert list(row) == expected


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


@pytest.mark.parametrize("grid", ["log+regular", "irregular"])
def test_log_grid_on_mixed_and_irregular_grids(grid):
    """The engine's log + regular grid, and one with holes: thinned points are increasing and span the
    range; where the records are dense (record gap < target/2 at both ends) the log gaps are even on the
    log + regular grid (next to a hole they cannot be: the CAR(1) clock takes the uneven gaps into account)."""
    t = design_steps(grid, 600, seed=2)
    idx = log_grid(t, 64)
    x = np.log(t)
    assert idx[0] == 0 and idx[-1] == t.size - 1 and np.all(np.diff(idx) > 0)
    target = (x[-1] - x[0]) / 63
    rec_gap = np.r_[np.inf, np.diff(x)]  # the record gap ending at each record
    half = target / 2
    dense = (rec_gap[idx[1:]] < half) & (rec_gap[idx[:-1]] < half) & (rec_gap[idx[:-1] + 1] < half)
    gaps = np.diff(x[idx])[dense]
    assert dense.sum() > 15
    assert gaps.max() < 1.5 * target
    if grid == "log+regular":
        assert gaps.min() > 0.5 * target


def test_record_steps_is_the_engine_grid():
    torch = pytest.importorskip("torch")  # noqa: F841 - the engine imports torch
    from sgdbayes.engine import record_grid
    from sgdbayes.stats.simulate import record_steps

    for args in ((2000, 10, 100), (300, 4, 100), (50, 7, 0)):
        np.testing.assert_array_equal(record_steps(*args), record_grid(*args))


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
    with pytest.raises(ValueError, match="method"):
        fit_loglog(np.log(t), np.log(R), method="bogus")
    with pytest.raises(ValueError, match="llc_se"):
        fit_diffusion(t, R, llc=1.0, llc_se=-1.0)


@pytest.mark.parametrize("value", [1e-300, 1e300, 0.37, 5.0])
def test_constant_displacement_is_an_unfit_run(value):
    """Issue 10 item 3: a constant R(t) has no exponent -- never alpha = 0 with a p-value."""
    t = np.arange(1, 201, dtype=float)
    with pytest.raises(UnfitRun, match="constant"):
        fit_diffusion(t, np.full(t.size, value))
    R = np.full(t.size, value)
    R[:5] = 0.0  # zeros dropped, the rest constant
    with pytest.raises(UnfitRun, match="constant"):
        fit_diffusion(t, R)


def test_zero_and_too_short_runs_are_unfit():
    t = np.arange(1, 201, dtype=float)
    with pytest.raises(UnfitRun, match="0 at every step"):
        fit_diffusion(t, np.zeros(t.size))
    R = np.zeros(t.size)
    R[-3:] = [1.0, 2.0, 3.0]
    with pytest.raises(UnfitRun, match="only 3"):
        fit_diffusion(t, R)
    assert issubclass(UnfitRun, ValueError)  # callers that catch ValueError per run keep working


def test_exact_power_law_and_determinism():
    t = np.unique(np.geomspace(1, 1e4, 50).round())
    R = 2.0 * t ** 0.37
    f = fit_loglog(np.log(t), np.log(R))
    assert f.alpha == pytest.approx(0.37, abs=1e-8)
    t2, R2 = simulate_curve(seed=5)
    a = fit_diffusion(t2, R2, seed=1).to_row()
    b = fit_diffusion(t2, R2, seed=1).to_row()
    assert a == b


def test_previous_method_still_available():
    t, R = simulate_curve(seed=6, phi=0.5)
    f = fit_loglog(np.log(t), np.log(R), method="pw-boot", n_boot=99, seed=0)
    g = fit_loglog(np.log(t), np.log(R))
    assert f.clock == "index" and f.alpha == pytest.approx(g.alpha, abs=3 * g.alpha_se)


def test_final_llc():
    v = [np.nan, 1.0, np.nan] + list(range(20))
    m, se, n = final_llc(v)
    assert n == 10 and m == pytest.approx(np.mean(range(10, 20)))
    assert se == pytest.approx(np.std(range(10, 20), ddof=1) / np.sqrt(10))
    with pytest.raises(ValueError):
        final_llc([np.nan])


def test_crossover_needs_enough_points():
    x = np.log(np.arange(1, 11, dtype=float))
    with pytest.raises(ValueError, match="at least 17"):
        fit_crossover(x, 0.5 * x)
