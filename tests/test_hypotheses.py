"""H1-H3 tests: Holm via multipletests, Wilcoxon 'less', lambda <= 0 reported separately."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sgdbayes.stats import hypotheses as hyp


def _runs(n=10, seed=0, alpha_mean=0.35):
    rng = np.random.default_rng(seed)
    a = rng.normal(alpha_mean, 0.08, n)
    se = rng.uniform(0.02, 0.06, n)
    lam = rng.uniform(5, 30, n)
    lam[0] = -1.35  # a negative LLC, as seen for a moons MLP (docs/methods.md: negative LLC estimates)
    lam_se = np.full(n, 0.5)
    df = pd.DataFrame({"run": [f"r{i}" for i in range(n)], "alpha": a, "alpha_se": se, "alpha_df": 50,
                       "late_alpha": a - 0.05, "late_alpha_se": se, "llc": lam, "llc_se": lam_se,
                       "llc_mean": lam * 0.9, "llc_mean_se": lam_se})
    df["d_s"] = 2 * df["llc"] * df["alpha"]
    df["late_d_s"] = 2 * df["llc"] * df["late_alpha"]
    return df


def test_holm_equals_multipletests_holm():
    df = _runs()
    r = hyp.test_h1(df, "whole")
    p = stats.t.cdf((df["alpha"] - 0.5) / df["alpha_se"], 50)
    np.testing.assert_allclose(r.per_run["pvalue"], p)
    np.testing.assert_allclose(r.per_run["pvalue_holm"], multipletests(p, method="holm")[1])
    # and not the Holm-Sidak default of multipletests
    hs = multipletests(p, method="holm-sidak")[1]
    assert not np.allclose(r.per_run["pvalue_holm"], hs)
    np.testing.assert_allclose(hyp.holm([0.01, 0.04, 0.03]), multipletests([0.01, 0.04, 0.03], method="holm")[1])
    rng = np.random.default_rng(0)
    for i in range(8):  # (each multipletests call runs a full gc: keep the loop short)
        p = rng.uniform(size=rng.integers(1, 30)) ** 3
        p[: i % 4] = p[0]  # ties
        np.testing.assert_allclose(hyp.holm(p), multipletests(p, method="holm")[1])


def test_h2_equivalence_and_nonpositive_lambda_separate():
    df = _runs()
    h1 = hyp.test_h1(df, "whole")
    h2 = hyp.test_h2(df, "whole")
    assert h2.n_tested == len(df) - 1
    assert list(h2.excluded["run"]) == ["r0"] and h2.excluded["reason"].iloc[0] == "lambda <= 0"
    # per-run H2 p-values are exactly H1's (alpha < 1/2) for the lambda > 0 runs
    p1 = h1.per_run.set_index("run")["pvalue"]
    np.testing.assert_allclose(h2.per_run["pvalue"], p1.loc[h2.per_run["run"]].to_numpy())
    # Wilcoxon on d_s - lambda, alternative "less"
    pos = df[df["llc"] > 0]
    w = stats.wilcoxon(pos["d_s"] - pos["llc"], alternative="less", method="exact")
    assert h2.pvalue == pytest.approx(w.pvalue)
    assert h2.test == "Wilcoxon signed-rank (exact)"
    assert "enters only through its sign" in h2.notes[0]
    fr = h2.per_run_frame()
    assert set(fr["tested"]) == {True, False} and len(fr) == len(df)


def test_verdict_follows_data():
    sub = hyp.test_h1(_runs(alpha_mean=0.30), "whole")
    sup = hyp.test_h1(_runs(alpha_mean=0.70), "whole")
    assert sub.pvalue < 0.05 and "supports the claim" in sub.summary()
    assert sup.pvalue > 0.5 and "does not support" in sup.summary()
    assert sup.n_reject == 0 and sup.share_upper_below == 0.0


def test_h3_threshold_depends_on_lambda():
    df = _runs()
    h3 = hyp.test_h3(df, "whole")
    pr = h3.per_run
    pos = df[df["llc"] > 0].reset_index(drop=True)
    np.testing.assert_allclose(pr["threshold"], pos["llc_mean"] / (2 * pos["llc"]))
    assert (pr["se"] > pos["alpha_se"]).all()  # lambda's uncertainty enters
    res = hyp.test_all(df)
    assert [r.id for r in res] == ["H1", "H1", "H2", "H3", "H2", "H3"]


def test_missing_se_raises():
    df = _runs()
    df.loc[1, "alpha_se"] = 0.0
    with pytest.raises(ValueError):
        hyp.test_h1(df, "whole")


def test_missing_column_and_bad_level_are_named():
    df = _runs().drop(columns=["late_alpha_se"])
    with pytest.raises(ValueError, match="late_alpha_se"):
        hyp.test_h1(df, "late")
    with pytest.raises(ValueError, match="level"):
        hyp.test_h1(_runs(), "whole", level=95)


def test_small_samples_get_exact_p_values():
    """Issue 10 item 16: n = 4 all below: the exact one-sided Wilcoxon p is 1/16, never ~0."""
    stat, p, n, method = hyp.wilcoxon_less([-0.1, -0.2, -0.3, -0.4])
    assert method == "exact" and n == 4 and p == pytest.approx(1 / 16)
    # ties: the exact sign-flip distribution, which scipy's exact method cannot use
    d = np.array([-1.0, -1.0, -2.0, -2.0, 0.5, -3.0])
    stat, p, n, method = hyp.wilcoxon_less(d)
    assert method == "exact permutation"
    signs = np.array(np.meshgrid(*[[-1, 1]] * 6)).reshape(6, -1).T
    ranks = stats.rankdata(np.abs(d))
    w_plus = (ranks * (signs * np.abs(d) > 0)).sum(1)
    w_obs = ranks[d > 0].sum()
    assert p == pytest.approx(np.mean(w_plus <= w_obs))
    # large n: the normal approximation, and the result says so
    assert hyp.wilcoxon_less(np.random.default_rng(0).normal(size=80))[3] == "normal approximation"
    p_sign, below, n_nz = hyp.sign_test_less([-1, -2, -3, -4, 0.0])
    assert (below, n_nz) == (4, 4) and p_sign == pytest.approx(1 / 16)


def test_median_interval_is_distribution_free():
    """Order-statistic interval for the median: coverage >= level at every n (exactly computable)."""
    assert np.isnan(hyp.median_interval([1, 2, 3, 4, 5])[0])  # n = 5 cannot reach 95 %
    lo, hi = hyp.median_interval(np.arange(1.0, 7.0))
    assert (lo, hi) == (1.0, 6.0)
    rng = np.random.default_rng(1)
    for n in (6, 9, 12, 25):
        x = rng.standard_exponential((1500, n))
        cov = np.mean([(lambda b: b[0] <= np.log(2) <= b[1])(hyp.median_interval(r)) for r in x])
        assert cov >= 0.94
    h = hyp.test_h1(_runs(n=12), "whole")
    ci = h.conf_int()
    assert ci.loc["H1", "ci_low"] <= h.estimate <= ci.loc["H1", "ci_high"]
    row = h.to_frame().iloc[0]
    assert row["pvalue"] == h.pvalue and row["estimate"] == h.estimate and row["test"] == h.test


def test_result_round_trip():
    h = hyp.test_h2(_runs(), "whole")
    back = hyp.HypothesisResult.from_dict(h.to_dict())
    pd.testing.assert_frame_equal(back.to_frame(), h.to_frame())
    pd.testing.assert_frame_equal(back.per_run, h.per_run)
    assert back.summary() == h.summary() and "Wilcoxon signed-rank (exact) across runs" in h.summary()
