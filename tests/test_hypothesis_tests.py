"""H4-H7 and the across-run verdicts of H1-H3 in stats/: known answers, every verdict, stated overrides."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sgdbayes.stats import ablation, concentration, prediction, verdicts
from sgdbayes.stats.divergence import bootstrap_divergences
from sgdbayes.stats.hypotheses import test_h1
from sgdbayes.stats.results import HypothesisTest, Verdict

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _runs(alpha):
    a = np.asarray(alpha, float)
    return pd.DataFrame({"run": np.arange(a.size), "late_alpha": a, "late_alpha_se": 0.02})


@pytest.mark.parametrize("shift, verdict", [(-0.1, Verdict.SUPPORTED), (0.1, Verdict.CONTRADICTED),
                                            (0.0, Verdict.NOT_SUPPORTED)])
def test_across_run_verdict_of_h1(shift, verdict):
    a = 0.5 + shift + np.random.default_rng(0).normal(0, 0.05, 40)
    h = verdicts.as_hypothesis_test(test_h1(_runs(a), "late"), "α < 1/2", "median α − 1/2", a - 0.5, seed=1)
    assert isinstance(h, HypothesisTest) and h.verdict is verdict
    assert h.test.startswith("Wilcoxon") and h.n_tested == 40 and h.details["n_below"] == int((a < 0.5).sum())


def test_across_run_verdict_untestable_without_runs():
    h = verdicts.as_hypothesis_test(test_h1(_runs([]), "late"), "α < 1/2", "median", np.array([]))
    assert h.verdict is Verdict.UNTESTABLE and "no run" in h.reason


def test_all_of_needs_every_statistic():
    S, N, C = Verdict.SUPPORTED, Verdict.NOT_SUPPORTED, Verdict.CONTRADICTED
    assert verdicts.all_of([("a", S, "x"), ("b", S, "y")])[0] is S
    assert verdicts.all_of([("a", S, "x"), ("b", N, "y")])[0] is N
    v, why = verdicts.all_of([("a", S, "x"), ("b", C, "y"), ("c", N, "z")])
    assert v is C and "b: y" in why
    assert verdicts.all_of([])[0] is Verdict.UNTESTABLE


# --------------------------------------------------------------------------- H4

def _clusters(lam_means, seed=0, sizes=(40, 25, 15, 8)):
    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    llc = np.asarray(lam_means, float)[labels] + g.normal(0, 0.5, labels.size)
    return labels, list(range(len(sizes))), llc


@pytest.mark.parametrize("lam_means, verdict", [((2, 4, 6, 8), Verdict.SUPPORTED),
                                                ((8, 6, 4, 2), Verdict.CONTRADICTED),
                                                ((5, 5, 5, 5), Verdict.NOT_SUPPORTED)])
def test_h4_mass_against_cluster_llc(lam_means, verdict):
    labels, cats, llc = _clusters(lam_means)
    h4, h4k = concentration.test_h4(labels, cats, llc, n_boot=200, seed=0)
    assert h4.id == "H4" and h4.verdict is verdict
    assert h4k.id == "H4-kruskal"
    assert h4k.verdict is (Verdict.NOT_SUPPORTED if verdict is Verdict.NOT_SUPPORTED else Verdict.SUPPORTED)
    # the exact permutation p over 4 clusters can never go below 1/4! = 0.042
    assert h4.details["pvalue_less_exact_over_clusters"] >= 1 / 24 - 1e-12


def test_h4_untestable_with_two_clusters():
    labels, cats, llc = _clusters((1, 2), sizes=(10, 10))
    h4, h4k = concentration.test_h4(labels, cats, llc, n_boot=50, seed=0)
    assert h4.verdict is Verdict.UNTESTABLE and "needs >= 3" in h4.reason
    assert h4k.verdict is Verdict.SUPPORTED  # two clusters can still differ


def test_kruskal_exact_for_small_samples():
    from scipy import stats

    import itertools

    groups = [np.array([1.0, 2.0, 3.5]), np.array([3.0, 5.0, 6.0]), np.array([7.0, 8.0])]
    kw = concentration.kruskal_test(groups)
    assert kw["p_method"] == "exact permutation"
    # brute force over the 8!/(3!3!2!) = 560 labelled splits
    x = np.concatenate(groups)
    h_obs = stats.kruskal(*groups).statistic
    hs = []
    for a in itertools.combinations(range(8), 3):
        rest = [i for i in range(8) if i not in a]
        for b in itertools.combinations(rest, 3):
            c = [i for i in rest if i not in b]
            hs.append(stats.kruskal(x[list(a)], x[list(b)], x[c]).statistic)
    assert len(hs) == 560
    assert kw["pvalue"] == pytest.approx(np.mean(np.asarray(hs) >= h_obs - 1e-12), rel=1e-9)
    assert kw["pvalue"] != pytest.approx(stats.kruskal(*groups).pvalue, rel=1e-3)
    big = concentration.kruskal_test([np.arange(6.0), np.arange(6.0) + 3])
    assert big["p_method"] == "asymptotic χ²"


# --------------------------------------------------------------------------- H5

def _h5_case(q_probs, n_sgd=400, seed=0, restates=False):
    g = np.random.default_rng(seed)
    sgd = g.choice(3, n_sgd, p=[0.5, 0.3, 0.2])
    sgld = g.choice(3, 800, p=q_probs)
    chains = np.repeat(np.arange(16), 50)
    br = bootstrap_divergences(sgld, sgd, [0, 1, 2], centroids=np.eye(3) * 0.1, groups_p=chains, n_boot=200, seed=1)
    return concentration.test_h5(br, "SGLD", restates_seeding=restates)


def test_h5_equivalence_verdicts():
    same = _h5_case([0.5, 0.3, 0.2], n_sgd=4000)
    assert same.verdict is Verdict.SUPPORTED, same.reason
    assert same.level == pytest.approx(0.9) and same.threshold == 0.05  # TOST: one-sided 95 % bounds
    assert set(same.details["metrics"]) == {"kl_smoothed", "js", "w1"}
    far = _h5_case([0.05, 0.05, 0.9])
    assert far.verdict is Verdict.CONTRADICTED
    mid = _h5_case([0.5, 0.3, 0.2], n_sgd=60)
    assert mid.verdict is Verdict.NOT_SUPPORTED
    inc = _h5_case([0.5, 0.3, 0.2], n_sgd=4000, restates=True)
    assert inc.verdict is Verdict.INCONCLUSIVE and "restates the seeding" in inc.reason
    assert concentration.test_h5(None, "free energy").verdict is Verdict.UNTESTABLE


def test_h5_reference_not_converged_is_inconclusive():
    g = np.random.default_rng(0)
    sgd, sgld = g.choice(3, 500), g.choice(3, 500)
    br = bootstrap_divergences(sgld, sgd, [0, 1, 2], centroids=np.eye(3), n_boot=50, seed=1)
    h = concentration.test_h5(br, "SGLD", reference_converged=False, convergence_note="split-R̂ 1.7")
    assert h.verdict is Verdict.INCONCLUSIVE and "split-R̂ 1.7" in h.reason


def test_paired_bootstrap_of_identical_sides_is_zero():
    labels = np.random.default_rng(0).choice(3, 50)
    fn = concentration.count_fn(labels, [0, 1, 2], normalize=True)
    br = concentration.paired_bootstrap_divergences(fn, fn, 50, np.eye(3), n_boot=30, seed=0)
    for m in ("kl", "kl_smoothed", "js", "w1"):
        assert br.point.metrics()[m] == pytest.approx(0, abs=1e-12)
        assert br.one_sided_bounds(m)[1] == pytest.approx(0, abs=1e-12) and br.equivalent[m]
    s = concentration.smoothed_count_fn(labels, [0, 1, 2], 0.5)(np.arange(50))
    assert s.sum() == pytest.approx(1.0) and (s > 0).all()


def test_g_test_ess_scales_the_second_sample():
    g = concentration.g_test_ess([50, 30, 20], [400, 400, 200], [10, 10, np.nan], [False, False, True])
    assert g.scale == pytest.approx(20 / 1000) and any("scaled" in n for n in g.notes)


def test_convergence_filter_plateau():
    steps = np.arange(1, 101)
    f = concentration.convergence_filter(steps, np.stack([np.full(100, 0.3), 1 - 0.005 * steps]), 0.1, 0.01)
    assert f.passed.tolist() == [True, False] and f.rel_drop[0] == pytest.approx(0, abs=1e-12)


# --------------------------------------------------------------------------- H6, H7

def test_h6_known_answers():
    g = np.random.default_rng(0)
    n = 60
    lr, b = g.choice([-3.0, -2.0, -1.0], n), g.choice([6.0, 8.0], n)
    noise = g.normal(0, 1.0, n)
    base = pd.DataFrame({"log10_lr": lr, "log2_batch": b})
    cases = [(2 * lr + g.normal(0, 0.3, n), 0.1 * lr + noise, Verdict.SUPPORTED),
             (0.1 * lr + noise, 2 * lr + g.normal(0, 0.3, n), Verdict.CONTRADICTED),
             (lr + g.normal(0, 0.5, n), lr + g.normal(0, 0.5, n), Verdict.NOT_SUPPORTED)]
    for d_s, llc, verdict in cases:
        c = ablation.h6_contrast(base.assign(d_s=d_s, llc=llc), ["log10_lr", "log2_batch"], n_boot=300, seed=0)
        h = ablation.test_h6(c)
        assert h.id == "H6" and h.direction == "greater" and h.verdict is verdict, (h.estimate, h.ci_low, h.ci_high)
    few = ablation.h6_contrast(base.iloc[:3].assign(d_s=1.0, llc=2.0), ["log10_lr"], n_boot=10)
    assert ablation.test_h6(few).verdict is Verdict.UNTESTABLE and "not estimable" in few.note


def test_h7_on_power_laws():
    t = np.geomspace(1, 1000, 80)
    g = np.random.default_rng(0)
    K = 30
    c = np.exp(g.normal(0, 0.5, K))
    R = c[:, None] * t[None, :] ** 0.4
    pred = prediction.predict_late_displacement(t, R, 0.5)
    np.testing.assert_allclose(pred.alpha_early, 0.4, atol=1e-9)
    np.testing.assert_allclose(pred.rel_err_final, 0.0, atol=1e-9)
    lam = 1 / c + g.normal(0, 0.01, K)  # weights move further when λ is small
    rho, prd = prediction.test_h7(pred.R_true_final, lam, pred.rel_err_final, margin=0.1, n_boot=200)
    assert rho.verdict is Verdict.SUPPORTED and rho.estimate < -0.9 and "t approximation" in rho.test
    assert prd.verdict is Verdict.SUPPORTED and prd.threshold == 0.1
    rho3, _ = prediction.test_h7(pred.R_true_final[:3], lam[:3], pred.rel_err_final[:3], margin=0.1, n_boot=20)
    assert rho3.verdict is Verdict.UNTESTABLE and "not estimable" in rho3.reason
