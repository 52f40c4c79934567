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
    lam[0] = -1.35  # a negative LLC, as seen for a moons MLP (SCIENCE.md sec 2)
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
    np.testing.assert_allclose(r.per_run["p"], p)
    np.testing.assert_allclose(r.per_run["p_holm"], multipletests(p, method="holm")[1])
    # and not the Holm-Sidak default of multipletests
    hs = multipletests(p, method="holm-sidak")[1]
    assert not np.allclose(r.per_run["p_holm"], hs)
    np.testing.assert_allclose(hyp.holm([0.01, 0.04, 0.03]), multipletests([0.01, 0.04, 0.03], method="holm")[1])


def test_h2_equivalence_and_nonpositive_lambda_separate():
    df = _runs()
    h1 = hyp.test_h1(df, "whole")
    h2 = hyp.test_h2(df, "whole")
    assert h2.n_tested == len(df) - 1
    assert list(h2.excluded["run"]) == ["r0"] and h2.excluded["reason"].iloc[0] == "lambda <= 0"
    # per-run H2 p-values are exactly H1's (alpha < 1/2) for the lambda > 0 runs
    p1 = h1.per_run.set_index("run")["p"]
    np.testing.assert_allclose(h2.per_run["p"], p1.loc[h2.per_run["run"]].to_numpy())
    # Wilcoxon on d_s - lambda, alternative "less"
    pos = df[df["llc"] > 0]
    w = stats.wilcoxon(pos["d_s"] - pos["llc"], alternative="less")
    assert h2.wilcoxon_p == pytest.approx(w.pvalue)
    assert "enters only through its sign" in h2.notes[0]
    fr = h2.to_frame()
    assert set(fr["tested"]) == {True, False} and len(fr) == len(df)


def test_verdict_follows_data():
    sub = hyp.test_h1(_runs(alpha_mean=0.30), "whole")
    sup = hyp.test_h1(_runs(alpha_mean=0.70), "whole")
    assert sub.wilcoxon_p < 0.05 and "supports the claim" in sub.verdict
    assert sup.wilcoxon_p > 0.5 and "does not support" in sup.verdict
    assert sup.n_reject == 0 and sup.share_upper_below == 0.0


def test_h3_threshold_depends_on_lambda():
    df = _runs()
    h3 = hyp.test_h3(df, "whole")
    pr = h3.per_run
    pos = df[df["llc"] > 0].reset_index(drop=True)
    np.testing.assert_allclose(pr["threshold"], pos["llc_mean"] / (2 * pos["llc"]))
    assert (pr["se"] > pos["alpha_se"]).all()  # lambda's uncertainty enters
    res = hyp.test_all(df)
    assert [r.name for r in res] == ["H1", "H1", "H2", "H3", "H2", "H3"]


def test_missing_se_raises():
    df = _runs()
    df.loc[1, "alpha_se"] = 0.0
    with pytest.raises(ValueError):
        hyp.test_h1(df, "whole")
