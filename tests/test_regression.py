"""Cross-run regressions: HC3 OLS, Spearman bootstrap, Deming EIV, Holm over the family."""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from sgdbayes.stats.regression import cross_run_regressions, deming


def _df(n=40, seed=0):
    rng = np.random.default_rng(seed)
    lam = rng.uniform(5, 40, n)
    lr = rng.choice([1e-3, 3e-3, 1e-2], n)
    d_s = 0.6 * lam + 300 * lr + rng.normal(0, 2, n)
    return pd.DataFrame({"run": range(n), "llc": lam + rng.normal(0, 2, n), "lr": lr, "d_s": d_s,
                         "noise": rng.normal(size=n), "llc_se": 2.0, "d_s_se": 2.0})


def test_ols_hc3_and_holm_family():
    df = _df()
    r = cross_run_regressions(df, [("d_s", "llc"), ("d_s", "lr"), ("noise", "lr")], eiv=[("d_s", "llc")],
                              eiv_se={"d_s": "d_s_se", "llc": "llc_se"}, n_boot=300)
    t = r.frame
    assert len(t) == 7
    ols = sm.OLS(df["d_s"], sm.add_constant(df["llc"])).fit(cov_type="HC3", use_t=True)
    row = t[(t.kind == "ols_hc3") & (t.x == "llc")].iloc[0]
    assert row["estimate"] == pytest.approx(ols.params["llc"])
    assert row["pvalue"] == pytest.approx(ols.pvalues["llc"])
    np.testing.assert_allclose(t["pvalue_holm"], multipletests(t["pvalue"], method="holm")[1])
    assert t.loc[(t.kind == "ols_hc3") & (t.y == "noise"), "pvalue_holm"].iloc[0] > 0.05
    assert "Holm" in r.summary()


def test_deming_recovers_slope_with_noisy_x():
    rng = np.random.default_rng(1)
    x_true = rng.uniform(0, 10, 2000)
    x = x_true + rng.normal(0, 1.5, x_true.size)
    y = 2.0 * x_true + 1 + rng.normal(0, 1.5, x_true.size)
    _, b_ols = np.polyfit(x, y, 1)[::-1]
    _, b_dem = deming(x, y, delta=1.0)
    assert abs(b_dem - 2.0) < 0.1
    assert b_ols < 1.8  # attenuation of OLS under errors in x


def test_spearman_bootstrap_interval_and_unestimable():
    df = _df()
    df["const"] = 1.0
    r = cross_run_regressions(df, [("d_s", "llc"), ("d_s", "const")], n_boot=300)
    t = r.frame
    sp = t[(t.kind == "spearman") & (t.x == "llc")].iloc[0]
    assert sp["ci_low"] < sp["estimate"] < sp["ci_high"] and sp["estimate"] > 0.5
    bad = t[t.x == "const"]
    assert bad["pvalue"].isna().all() and bad["note"].str.contains("not estimable").all()
    assert bad["pvalue_holm"].isna().all()
