"""Coverage of the 95 % intervals on simulated curves with known truth (issue 17; docs/intervals.md).

The fast tests run the hardest cells of the suite at 200 curves (Monte-Carlo se ~0.015, fixed seeds, so
the numbers are reproducible); ``-m slow`` runs the whole grid of benchmarks/coverage.py at 400 curves.
"""
import math

import pytest

from sgdbayes.stats.coverage import GOAL, PHIS, Condition, null_size, run_condition, suite, wilson


def _cov(cond, n=200, seed=1):
    r = run_condition(cond, n, seed=seed)
    return r, {p: r.coverage(p) for p in r.scored}


def test_wilson_interval():
    lo, hi = wilson(190, 200)
    assert lo == pytest.approx(0.9104, abs=1e-4) and hi == pytest.approx(0.9727, abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))


@pytest.mark.parametrize("cond", [
    Condition(grid="log+regular", n_points=300, phi=0.95, clock="record"),  # the issue's external runs
    Condition(grid="log+regular", n_points=300, phi=0.9, clock="log t"),
    Condition(grid="irregular", n_points=300, phi=0.8, clock="log t"),
    Condition(grid="log", n_points=2000, phi=0.8, clock="record"),          # a dense block of early records
], ids=lambda c: c.label())
def test_alpha_interval_holds_its_level_on_hard_inputs(cond):
    _, cov = _cov(cond)
    print(cond.label(), cov)
    assert 0.91 <= cov["alpha"] <= 0.99


def test_previous_method_undercovers_there():
    """The test can fail: the previous default (Prais-Winsten AR(1) in the point index, bootstrap-t at
    the estimated rho) covers ~0.83 on the issue's log + regular grid with AR(1)-per-record noise."""
    _, cov = _cov(Condition(grid="log+regular", n_points=300, phi=0.95, clock="record", method="pw-boot"))
    assert cov["alpha"] < 0.9


def test_d_s_interval_with_noisy_lambda():
    _, cov = _cov(Condition(phi=0.5, llc_noise=0.2))
    assert 0.91 <= cov["d_s"] <= 0.99


def test_t_c_and_late_alpha_with_a_crossover():
    r, cov = _cov(Condition(grid="log+regular", n_points=100, phi=0.8, crossover=True, llc_noise=0.2), n=120)
    print(cov)
    assert cov["t_c"] >= 0.9
    assert cov["alpha_late"] >= 0.88 and cov["d_s_late"] >= 0.88


def test_cell_result_round_trip():
    from sgdbayes.stats.coverage import CellResult

    r = run_condition(Condition(phi=0.5, llc_noise=0.2), 20, seed=2)
    back = CellResult.from_dict(r.to_dict())
    assert back.condition == r.condition and back.hits == r.hits
    assert list(r.conf_int().index) == ["alpha", "d_s"]


def test_coverage_does_not_depend_on_alpha_or_noise_scale():
    """The fit is equivariant in (c, alpha, sigma): same seeds, same hits, whatever the true alpha and sigma."""
    a = run_condition(Condition(phi=0.9, alpha=0.05, sigma=0.01), 60, seed=3)
    b = run_condition(Condition(phi=0.9, alpha=1.0, sigma=0.2), 60, seed=3)
    assert a.hits == b.hits


def test_tests_of_h1_hold_their_size_under_the_null():
    """Issue 17 item 4: alpha = 1/2 in every run; false-positive rate at 5 % of the per-run t-test, Holm
    (any run rejected), Wilcoxon and sign tests across runs: not significantly above 0.05."""
    ns = null_size(n_ensembles=150, n_runs=12, phi=0.8, seed=11).set_index("test")
    print(ns)
    assert (ns["ci_low"] <= 0.05).all()
    assert ns.loc["per-run t (share of runs)", "rate"] <= 0.06


def test_suite_spans_the_issue_grid():
    conds = [c for block in suite().values() for c in block]
    assert {c.phi for c in conds} == set(PHIS)
    assert {c.grid for c in conds} == {"log", "regular", "log+regular", "irregular"}
    assert {c.n_points for c in conds} >= {30, 2000}
    assert min(c.alpha for c in conds) == 0.05 and max(c.alpha for c in conds) == 1.0
    assert {c.crossover for c in conds} == {True, False} and {c.clock for c in conds} == {"log t", "record"}
    assert len({c.llc_noise for c in conds}) >= 4


@pytest.mark.slow
def test_full_suite():
    """Every alpha / d_s cell within GOAL up to Monte-Carlo error, or (where no method got there, the
    near-unit-root cells) most of its runs carry an interval flag; t_c >= 0.88 everywhere."""
    failures = []
    for i, cond in enumerate(c for block in suite().values() for c in block):
        if cond.method != "ar1-boot":
            continue
        r = run_condition(cond, 400, seed=1000 + i)
        for p in r.scored:
            cov, n = r.coverage(p), r.scored[p]
            mc = 2.5 * math.sqrt(0.95 * 0.05 / n)
            flagged = 1 - r.scored_unflagged[p] / n
            if p == "t_c":
                ok = cov >= 0.88
            else:
                ok = cov <= GOAL[1] + mc and (cov >= GOAL[0] - mc or flagged >= 0.5)
            if not ok:
                failures.append((cond.label(), p, round(cov, 3), round(flagged, 2)))
    assert not failures, failures
