"""Issue 10 items 15-16: stats functions validate their arguments (the error names the argument),
and rank statistics at n <= 10 get exact p-values that say so."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sgdbayes.stats import ablation, concentration, prediction, summaries, verdicts
from sgdbayes.stats.bootstrap import percentile_interval, resample_runs
from sgdbayes.stats.divergence import bootstrap_divergences, compare_distributions
from sgdbayes.stats.hypotheses import test_h1
from sgdbayes.stats.regression import cross_run_regressions, spearman, spearman_exact_pvalues
from sgdbayes.stats.tempering import sweep_xi

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# --------------------------------------------------------------------------- exact small-sample p

def test_perfect_rank_correlation_at_n4_is_not_p0():
    c = spearman(np.arange(4.0), np.arange(4.0), n_boot=20)
    assert c.estimate == 1.0
    assert c.pvalue == pytest.approx(2 / 24) and c.pvalue_greater == pytest.approx(1 / 24)
    assert c.p_method.startswith("exact permutation")
    assert stats.spearmanr(np.arange(4.0), np.arange(4.0)).pvalue == 0.0  # what was printed before


@pytest.mark.parametrize("n, ties", [(5, False), (7, True), (8, False)])
def test_exact_spearman_matches_scipy_permutation_test(n, ties):
    g = np.random.default_rng(n)
    x, y = g.normal(size=n), g.normal(size=n)
    if ties:
        x, y = np.round(x), np.round(y)

    def rho(a, axis=-1):
        ra, rb = stats.rankdata(a, axis=-1), stats.rankdata(y)
        ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean()
        return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum())

    want = [stats.permutation_test((x,), rho, permutation_type="pairings", n_resamples=np.inf, vectorized=True,
                                   alternative=alt).pvalue for alt in ("two-sided", "less", "greater")]
    np.testing.assert_allclose(spearman_exact_pvalues(x, y), want, rtol=1e-12)


def test_regression_table_says_which_p():
    g = np.random.default_rng(0)
    small = pd.DataFrame({"x": np.arange(6.0), "y": np.arange(6.0) + g.normal(0, 0.1, 6)})
    big = pd.DataFrame({"x": g.normal(size=30), "y": g.normal(size=30)})
    s = cross_run_regressions(small, [("y", "x")], n_boot=50).frame.set_index("kind")
    b = cross_run_regressions(big, [("y", "x")], n_boot=50).frame.set_index("kind")
    assert s.loc["spearman", "p_method"].startswith("exact") and "exact permutation" in s.loc["spearman", "note"]
    assert s.loc["spearman", "pvalue"] == pytest.approx(2 / 720)
    assert b.loc["spearman", "p_method"] == "t approximation"
    assert b.loc["ols_hc3", "p_method"] == "t (HC3)"


# --------------------------------------------------------------------------- validation

LEVEL_CALLS = {
    "bootstrap_ci": lambda lv: summaries.bootstrap_ci([1.0, 2.0, 3.0], level=lv),
    "mean_ci": lambda lv: summaries.mean_ci([1.0, 2.0], level=lv),
    "summarize": lambda lv: summaries.summarize([1.0, 2.0], level=lv),
    "percentile_interval": lambda lv: percentile_interval([1.0, 2.0], lv),
    "cross_run_regressions": lambda lv: cross_run_regressions(pd.DataFrame({"y": [1.0], "x": [2.0]}), [("y", "x")],
                                                              level=lv),
    "bootstrap_divergences": lambda lv: bootstrap_divergences([0, 1], [0, 1], [0, 1], level=lv),
    "sweep_xi": lambda lv: sweep_xi([0, 1], [0, 1], [0.1, 0.2], [0.4, 0.4], 0.01, level=lv),
    "test_h4": lambda lv: concentration.test_h4([0, 1], [0, 1], [1.0, 2.0], level=lv),
    "test_h7": lambda lv: prediction.test_h7([1.0], [1.0], [0.1], margin=0.1, level=lv),
    "h6_contrast": lambda lv: ablation.h6_contrast(pd.DataFrame({"d_s": [1.0], "llc": [1.0], "lr": [1.0]}), ["lr"],
                                                   level=lv),
    "test_crossover": lambda lv: verdicts.test_crossover(-0.1, -0.2, 0.0, lv),
}


@pytest.mark.parametrize("name", sorted(LEVEL_CALLS))
@pytest.mark.parametrize("bad", [0.0, 1.0, 95, -0.5, float("nan")])
def test_level_must_be_a_coverage_in_0_1(name, bad):
    with pytest.raises(ValueError, match="level"):
        LEVEL_CALLS[name](bad)


N_BOOT_CALLS = {
    "bootstrap_ci": lambda n: summaries.bootstrap_ci([1.0, 2.0, 3.0], n_boot=n),
    "resample_runs": lambda n: resample_runs(5, n, 0),
    "cross_run_regressions": lambda n: cross_run_regressions(pd.DataFrame({"y": [1.0], "x": [2.0]}), [("y", "x")],
                                                             n_boot=n),
    "bootstrap_divergences": lambda n: bootstrap_divergences([0, 1], [0, 1], [0, 1], n_boot=n),
    "sweep_xi": lambda n: sweep_xi([0, 1], [0, 1], [0.1, 0.2], [0.4, 0.4], 0.01, n_boot=n),
    "test_h4": lambda n: concentration.test_h4([0, 1], [0, 1], [1.0, 2.0], n_boot=n),
    "paired_bootstrap": lambda n: concentration.paired_bootstrap_divergences(np.ones, np.ones, 3, None, n_boot=n),
    "spearman": lambda n: spearman([1.0, 2, 3, 4], [1.0, 2, 4, 3], n_boot=n),
}


@pytest.mark.parametrize("name", sorted(N_BOOT_CALLS))
@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_n_boot_must_be_a_positive_integer(name, bad):
    with pytest.raises(ValueError, match="n_boot"):
        N_BOOT_CALLS[name](bad)


def test_missing_columns_are_named():
    runs = pd.DataFrame({"d_s": [1.0, 2.0], "llc": [1.0, 3.0]})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['lr'\]"):
        cross_run_regressions(runs, [("d_s", "lr")])
    with pytest.raises(ValueError, match=r"\['llc_se_typo'\]"):
        cross_run_regressions(runs.assign(lr=1.0), [("d_s", "llc")], eiv=[("d_s", "llc")],
                              eiv_se={"d_s": "llc", "llc": "llc_se_typo"})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['log10_lr'\]"):
        ablation.h6_contrast(runs, ["log10_lr"])


def test_standard_errors_must_be_nonnegative():
    g = np.random.default_rng(0)
    runs = pd.DataFrame({"d_s": g.normal(size=10), "llc": g.normal(size=10), "d_s_se": 0.1,
                         "llc_se": np.r_[0.2, -0.1, np.full(8, 0.2)]})
    with pytest.raises(ValueError, match="'llc_se' must be >= 0"):
        cross_run_regressions(runs, [], eiv=[("d_s", "llc")], eiv_se={"d_s": "d_s_se", "llc": "llc_se"}, n_boot=10)


def test_pvalues_must_lie_in_0_1():
    runs = pd.DataFrame({"run": [0, 1, 2], "late_alpha": [0.3, 0.4, 0.35], "late_alpha_se": 0.02})
    h = test_h1(runs, "late")
    h.pvalue = 1.2
    with pytest.raises(ValueError, match="p-value"):
        verdicts.as_hypothesis_test(h, "c", "s", runs["late_alpha"] - 0.5)


def test_other_arguments_are_checked():
    with pytest.raises(ValueError, match="margin"):
        bootstrap_divergences([0, 1], [0, 1], [0, 1], margin=0)
    with pytest.raises(ValueError, match="pseudocount"):
        compare_distributions([1, 2], [2, 1], pseudocount=-1)
    with pytest.raises(ValueError, match="metrics"):
        bootstrap_divergences([0, 1], [0, 1], [0, 1], metrics=("kl", "hellinger"))
    with pytest.raises(ValueError, match="lr"):
        sweep_xi([0, 1], [0, 1], [0.1, 0.2], [0.4, 0.4], 0.0)
    with pytest.raises(ValueError, match="grid"):
        sweep_xi([0, 1], [0, 1], [0.1, 0.2], [0.4, 0.4], 0.01, grid=[-1.0, 1.0])
    with pytest.raises(ValueError, match="seed"):
        summaries.bootstrap_ci([1.0, 2.0, 3.0], seed=-1)
    with pytest.raises(ValueError, match="split"):
        prediction.predict_late_displacement(np.arange(1.0, 20), np.ones((1, 19)), 1.5)
    with pytest.raises(ValueError, match="margin"):
        prediction.test_h7([1.0], [1.0], [0.1], margin=-1)
    with pytest.raises(ValueError, match="window"):
        concentration.convergence_filter(np.arange(1, 10), np.ones((1, 9)), 0.0, 0.01)
    with pytest.raises(ValueError, match="last"):
        summaries.llc_summaries(np.ones((2, 3)), last=0)
