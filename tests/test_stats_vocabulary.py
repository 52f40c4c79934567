"""One vocabulary (issue 11 item 3): every stats result derives from Result and round-trips through
strict JSON; intervals come from conf_int(level) with level = coverage; randomness is `seed`."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from sgdbayes.stats import ablation, concentration, prediction, summaries
from sgdbayes.stats.bootstrap import percentile_interval
from sgdbayes.stats.cluster import FunctionSpaceClusterer
from sgdbayes.stats.divergence import bootstrap_divergences, compare_distributions, g_test
from sgdbayes.stats.regression import cross_run_regressions, spearman
from sgdbayes.stats.results import ESTIMATE_COLUMNS, Result, encode
from sgdbayes.stats.tempering import cluster_properties, free_energy_distribution, sweep_xi, tempered_distribution

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _labels(seed=0):
    g = np.random.default_rng(seed)
    lab_sgd = g.choice(3, 90, p=[0.5, 0.3, 0.2])
    lab_sgld = g.choice(3, 60, p=[0.4, 0.4, 0.2])
    return lab_sgd, lab_sgld, np.repeat(np.arange(6), 10)


def _results() -> dict:
    g = np.random.default_rng(1)
    lab_sgd, lab_sgld, chains = _labels()
    cats = [0, 1, 2]
    C = g.normal(size=(3, 2))
    loss, alpha, llc = g.uniform(0.1, 0.3, 90), g.uniform(0.3, 0.7, 90), g.uniform(1, 5, 90)
    props = cluster_properties(lab_sgd, cats, loss, alpha, llc)
    runs = pd.DataFrame({"d_s": g.normal(size=30), "llc": g.normal(size=30), "lr": g.normal(size=30)})
    X = g.normal(size=(80, 12))
    X[:40] += 6
    t = np.geomspace(1, 500, 50)
    out = {
        "gtest": g_test([10, 20, 5], [12, 18, 9], cats),
        "divergence": compare_distributions([10, 20, 5], [12, 18, 9], C, categories=cats),
        "bootstrap": bootstrap_divergences(lab_sgld, lab_sgd, cats, centroids=C, groups_p=chains, n_boot=50, seed=3),
        "properties": props,
        "xi_sweep": sweep_xi(lab_sgd, cats, loss, alpha, 0.01, grid=np.geomspace(0.1, 10, 9), n_boot=20, seed=2),
        "tempered": tempered_distribution(np.bincount(lab_sgd), props.log_D(0.5), 90.0, categories=cats, xi=0.5),
        "free_energy": free_energy_distribution(props.loss, props.llc, 90.0, categories=cats),
        "structure": FunctionSpaceClusterer(n_components=3, min_cluster_size=10).fit(X).structure_,
        "regressions": cross_run_regressions(runs, [("d_s", "llc"), ("d_s", "lr")], n_boot=50, seed=1),
        "correlation": spearman(runs["llc"], runs["d_s"], n_boot=50, seed=1),
        "summary": summaries.summarize(g.normal(size=20), seed=1, n_boot=100),
        "llc_summaries": summaries.llc_summaries(g.normal(size=(4, 12))),
        "prediction": prediction.predict_late_displacement(t, t[None, :] ** 0.4 * np.exp(g.normal(0, .01, (3, 50))),
                                                           0.5),
        "contrast": ablation.h6_contrast(runs.assign(log10_lr=runs["lr"]), ["log10_lr"], n_boot=30, seed=0),
        "plateau": concentration.convergence_filter(np.arange(1, 51), g.uniform(size=(3, 50)), 0.2, 0.01),
    }
    out["h5"] = concentration.test_h5(out["bootstrap"], "SGLD", gtest=out["gtest"])
    out["h4"], out["h4k"] = concentration.test_h4(lab_sgd, cats, llc, n_boot=30, seed=0)
    return out


RESULTS = _results()


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_every_result_speaks_the_vocabulary(name):
    r = RESULTS[name]
    assert isinstance(r, Result)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))  # strict JSON
    back = type(r).from_dict(d)
    assert type(back) is type(r)
    assert json.dumps(encode(back), sort_keys=True) == json.dumps(encode(r), sort_keys=True)
    est = r.estimates()
    assert list(est.columns) == ESTIMATE_COLUMNS
    ci = r.conf_int()
    assert list(ci.columns) == ["ci_low", "ci_high"] and list(ci.index) == list(est.index)
    assert isinstance(r.to_frame(), pd.DataFrame)
    assert isinstance(r.summary(), str) and r.summary()
    with pytest.raises(ValueError, match="level"):
        r.conf_int(95)


def test_conf_int_level_is_coverage_for_bootstrap_results():
    b = RESULTS["bootstrap"]
    w = {lv: (b.conf_int(lv)["ci_high"] - b.conf_int(lv)["ci_low"]).to_numpy() for lv in (0.5, 0.95)}
    assert (w[0.5] <= w[0.95]).all() and (w[0.5] < w[0.95]).any()
    assert b.conf_int(0.95).loc["js"].tolist() == list(percentile_interval(b.boot["js"], 0.95))
    reg = RESULTS["regressions"]
    assert reg.conf_int(0.95).loc["ols_hc3:d_s~llc"].tolist() == \
        reg.frame.set_index("parameter").loc["ols_hc3:d_s~llc", ["ci_low", "ci_high"]].tolist()
    with pytest.raises(ValueError, match="recompute"):
        reg.conf_int(0.9)  # bootstrap intervals exist at the level they were computed at
    sc = RESULTS["contrast"]
    assert sc.conf_int(0.5).loc["delta", "ci_low"] >= sc.conf_int(0.95).loc["delta", "ci_low"]


def test_compat_names_are_gone():
    """Phase B of issue 11 removed the old spellings: Regressions.table, rng=, .intervals/.upper, xi_star_ci."""
    assert not hasattr(RESULTS["regressions"], "table")
    b = RESULTS["bootstrap"]
    assert not hasattr(b, "intervals") and not hasattr(b, "upper")
    lo, hi = b.one_sided_bounds("js")
    assert lo <= hi and b.equivalent["js"] == (hi < b.margin)
    lab_sgd, lab_sgld, chains = _labels()
    with pytest.raises(TypeError, match="rng"):
        bootstrap_divergences(lab_sgld, lab_sgd, [0, 1, 2], rng=5, n_boot=5)


def test_seed_is_the_public_name():
    lab_sgd, lab_sgld, chains = _labels()
    kw = dict(groups_p=chains, n_boot=40, metrics=("js",), gtest=False)
    a = bootstrap_divergences(lab_sgld, lab_sgd, [0, 1, 2], seed=5, **kw)
    c = bootstrap_divergences(lab_sgld, lab_sgd, [0, 1, 2], seed=np.random.default_rng(5), **kw)
    np.testing.assert_array_equal(a.boot["js"], c.boot["js"])
    g = np.random.default_rng(0)
    loss, alpha = g.uniform(0.1, 0.3, 90), g.uniform(0.3, 0.7, 90)
    s1 = sweep_xi(lab_sgd, [0, 1, 2], loss, alpha, 0.01, n_boot=10, seed=3)
    s2 = sweep_xi(lab_sgd, [0, 1, 2], loss, alpha, 0.01, n_boot=10, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(s1.boot_xi_star, s2.boot_xi_star)


def test_fields_use_the_shared_names():
    """Results carry pvalue (never p / p_value / wilcoxon_p) and seed (never rng / random_state)."""
    bad = {"p", "p_value", "rng", "random_state", "lo", "hi", "se_alpha"}
    for name, r in RESULTS.items():
        assert not bad & {f.name for f in dataclasses.fields(r)}, name
