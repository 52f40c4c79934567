"""Posterior concentration: the convergence filter, H4 and H5 (paper §4.2, Figs 3-4, Table 2;
docs/methods.md, "Posterior concentration").

* :func:`convergence_filter`: a relative loss plateau over the last ``window`` of training.
* :func:`test_h4`: SGD mass concentrates on low-λ clusters. ``"H4"``: Spearman ρ between the
  cluster masses P_sgd(c) and the mean cluster λ̂_c, over the categories; percentile bootstrap
  over runs (masses and means recomputed from each resample; an interval needs >= 10 finite
  resamples); one-sided bootstrap p = (#{ρ* ≥ 0} + 1) / (B + 1) of H0 ρ ≥ 0; decided by
  :func:`~sgdbayes.stats.results.decide` (threshold 0, "less"). ``"H4-kruskal"``: Kruskal–Wallis
  test that λ̂ differs between clusters (clusters with >= 2 runs; exact permutation p when they
  hold <= 10 runs in all); an omnibus test without an interval, so its verdict is set by the
  p-value alone (stated override): supported when p < 1 − level.
* :func:`test_h5`: tempered SGD ≈ a Bayesian reference. An equivalence claim ("≈"): for every
  divergence (smoothed KL, JS, W1) the one-sided upper ``level`` bootstrap bound lies below the
  margin. In decide's terms: the two one-sided bounds at ``level`` form the two-sided interval at
  coverage ``2 level − 1`` (the TOST convention), threshold = margin, direction "less"; the
  claim must hold for every divergence (:func:`~sgdbayes.stats.verdicts.all_of`). Overrides
  (stated): *inconclusive* when no SGLD sample left its seed's cluster (the SGLD masses then only
  restate the seeding) or when the caller says the reference has not converged.
* :func:`paired_bootstrap_divergences`: divergences when both distributions derive from the same
  SGD runs (free-energy reference vs tempered or raw SGD): each resample of runs feeds both.
* :func:`g_test_ess`: the G-test of homogeneity with the SGLD counts scaled to their effective
  sample size (SGLD samples within a chain are autocorrelated).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .._validation import check_float, check_generator, check_level, check_n_boot
from .bootstrap import label_positions, one_sided_bounds, percentile_interval
from .divergence import (
    DEFAULT_MARGIN,
    BootstrapDivergenceResult,
    DivergenceResult,
    GTestResult,
    g_test,
    js_divergence,
    kl_divergence,
    to_probabilities,
    wasserstein1,
)
from .results import HypothesisTest, Result, Verdict, decide
from .verdicts import all_of

__all__ = ["PlateauFilter", "convergence_filter", "mass_llc_spearman", "test_h4", "kruskal_test",
           "paired_bootstrap_divergences", "test_h5", "g_test_ess", "count_fn", "smoothed_count_fn",
           "free_energy_fn", "H5_METRICS"]

#: the divergences an equivalence claim (H5) must pass
H5_METRICS = ("kl_smoothed", "js", "w1")


# --------------------------------------------------------------------------- convergence filter

@dataclass
class PlateauFilter(Result):
    """Relative loss plateau per run (:func:`convergence_filter`): ``rel_drop`` and ``passed``."""

    rel_drop: np.ndarray
    passed: np.ndarray
    window: float
    rel_tol: float


def convergence_filter(steps, loss, window: float, rel_tol: float) -> PlateauFilter:
    """Relative loss plateau over the last ``window`` fraction of steps.

    For each run (row of ``loss``), an OLS line is fitted to the recorded training loss at the
    grid steps t in ``[(1 - window) T, T]``; the relative drop over the window is
    ``-slope * window * T / mean(loss in window)``. A run passes when the drop is ``< rel_tol``
    (and the loss is finite).
    """
    window = check_float("window", window, 0.0, 1.0, strict_min=True)
    rel_tol = check_float("rel_tol", rel_tol)
    steps = np.asarray(steps, float)
    T = steps[-1]
    sel = steps >= (1.0 - window) * T - 1e-9
    t = steps[sel]
    L = np.asarray(loss, float)[:, sel]
    if t.size < 2:
        rel = np.full(L.shape[0], np.nan)
    else:
        tc = t - t.mean()
        slope = (L - L.mean(1, keepdims=True)) @ tc / (tc @ tc)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = -slope * window * T / L.mean(1)
    passed = np.isfinite(rel) & (rel < rel_tol)
    return PlateauFilter(rel, passed, window, rel_tol)


# --------------------------------------------------------------------------- H4

def mass_llc_spearman(positions, n_categories: int, llc, idx=None) -> float:
    """Spearman ρ(P_sgd(c), mean λ̂_c) over the categories with runs and a finite λ̂, from the runs
    ``idx`` (default all); NaN with fewer than 3 such categories."""
    from scipy.stats import spearmanr

    pos = np.asarray(positions)
    llc = np.asarray(llc, float)
    if idx is None:
        idx = np.arange(pos.size)
    p = pos[idx]
    v = llc[idx]
    K = int(n_categories)
    n = np.bincount(p, minlength=K)
    fin = np.isfinite(v)
    s = np.bincount(p[fin], weights=v[fin], minlength=K)
    c = np.bincount(p[fin], minlength=K)
    ok = (n > 0) & (c > 0)
    if ok.sum() < 3:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = s[ok] / c[ok]
        r = spearmanr(n[ok] / p.size, lam).statistic
    return float(r)


def kruskal_test(groups: Sequence[np.ndarray], exact_max_n: int = 10) -> dict:
    """Kruskal–Wallis H over ``groups`` (each >= 2 values); exact permutation p when they hold
    <= ``exact_max_n`` values in all, else the asymptotic χ² p. NaN with fewer than 2 groups."""
    from scipy import stats

    groups = [np.asarray(g, float) for g in groups]
    if len(groups) < 2:
        return {"statistic": float("nan"), "pvalue": float("nan"), "k": len(groups), "p_method": "none"}
    kw = stats.kruskal(*groups)
    p, method = float(kw.pvalue), "asymptotic χ²"
    if sum(g.size for g in groups) <= exact_max_n and np.isfinite(kw.statistic):
        res = stats.permutation_test(groups, lambda *s, axis: stats.kruskal(*s, axis=axis).statistic,
                                     permutation_type="independent", n_resamples=np.inf, vectorized=True,
                                     alternative="greater")
        p, method = float(res.pvalue), "exact permutation"
    return {"statistic": float(kw.statistic), "pvalue": p, "k": len(groups), "p_method": method}


def _h4_context(labels, cats, llc, counts) -> tuple[dict, list]:
    """Run-level context of H4 and the exact permutation p of ρ over the clusters taken as fixed."""
    from .cluster import category_names
    from .regression import spearman_exact_pvalues

    fin = np.isfinite(llc)
    big = int(np.argmax(counts))
    lam_big, lam_rest = llc[(labels == cats[big]) & fin], llc[(labels != cats[big]) & fin]
    has = np.array([((labels == c) & fin).any() for c in cats])
    details = {"n_clusters_with_llc": int(has.sum()), "largest_cluster": category_names(cats)[big],
               "llc_largest_median": float(np.median(lam_big)) if lam_big.size else float("nan"),
               "llc_rest_median": float(np.median(lam_rest)) if lam_rest.size else float("nan")}
    notes = []
    ok = (counts > 0) & has
    k = int(ok.sum())
    mass = counts[ok] / labels.size
    lam_c = np.array([llc[(labels == c) & fin].mean() for c, o in zip(cats, ok) if o])
    if k >= 3 and np.ptp(mass) > 0 and np.ptp(lam_c) > 0:
        p = spearman_exact_pvalues(mass, lam_c)[1]
        details["pvalue_less_exact_over_clusters"] = p
        notes.append(f"exact permutation p of ρ over the {k} clusters, their masses and mean λ̂ taken as "
                     f"fixed: {p:.3g} (the smallest possible with {k} clusters is 1/{k}! = "
                     f"{1 / math.factorial(k):.3g})")
    return details, notes


def _kruskal_hypothesis(kw: dict, n_values: int, level: float) -> HypothesisTest:
    a = 1 - level
    if not np.isfinite(kw["pvalue"]):
        kv = (Verdict.UNTESTABLE, "fewer than 2 clusters with >= 2 runs")
    elif kw["pvalue"] < a:
        kv = (Verdict.SUPPORTED, f"omnibus test without an interval, decided by its p-value: p < {a:g}")
    else:
        kv = (Verdict.NOT_SUPPORTED, f"omnibus test without an interval, decided by its p-value: p >= {a:g}")
    return HypothesisTest.decided("H4-kruskal", "λ̂ differs between clusters", "Kruskal–Wallis H (λ̂ by cluster)",
                                  kw["statistic"], None, None, kw["pvalue"] if np.isfinite(kw["pvalue"]) else None,
                                  f"Kruskal–Wallis ({kw['p_method']}), H0: λ̂ distributed alike in every cluster",
                                  level, threshold=0.0, direction="greater", override=kv, window="clusters",
                                  n_tested=n_values, details={"k": kw["k"]})


def test_h4(labels, categories: Sequence, llc, *, n_boot: int = 1000, level: float = 0.95,
            seed=0) -> list[HypothesisTest]:
    """H4 for SGD runs with cluster ``labels`` and λ̂ ``llc``: ``[H4 (ρ < 0), H4-kruskal]``.

    ``seed`` (int or numpy Generator; its stream continues) draws the ``n_boot`` resamples of runs.
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    cats = list(categories)
    labels = np.asarray(labels)
    llc = np.asarray(llc, float)
    if labels.shape != llc.shape:
        raise ValueError(f"labels and llc need one value per run, got {labels.shape} and {llc.shape}")
    rng = check_generator(seed)
    K, N = len(cats), labels.size
    fin = np.isfinite(llc)
    groups = [g for g in (llc[(labels == c) & fin] for c in cats) if g.size >= 2]
    kw = kruskal_test(groups)
    pos = label_positions(labels, cats)
    rho = mass_llc_spearman(pos, K, llc)
    rho_boot = np.array([mass_llc_spearman(pos, K, llc, rng.integers(0, N, N)) for _ in range(n_boot)])
    rb = rho_boot[np.isfinite(rho_boot)]
    lo, hi = percentile_interval(rb, level) if rb.size >= 10 else (float("nan"), float("nan"))
    p = float((np.sum(rb >= 0) + 1) / (rb.size + 1)) if rb.size else float("nan")
    details, notes = _h4_context(labels, cats, llc, np.bincount(pos, minlength=K))
    details.update(n_boot_finite=int(rb.size), kruskal=kw)
    override = None
    if not np.isfinite(rho):
        override = (Verdict.UNTESTABLE, f"only {details['n_clusters_with_llc']} categories with runs "
                                        f"(a rank correlation needs >= 3)")
    h4 = HypothesisTest.decided("H4", "SGD mass concentrates on low-λ clusters", "Spearman ρ(P_sgd(c), mean λ̂_c)",
                                rho, lo, hi, p if np.isfinite(p) else None,
                                "bootstrap over runs, one-sided H0: ρ ≥ 0", level, threshold=0.0, direction="less",
                                override=override, window="clusters", n_tested=N, notes=notes, details=details)
    return [h4, _kruskal_hypothesis(kw, int(sum(g.size for g in groups)), level)]


# --------------------------------------------------------------------------- Table 2 pieces

def count_fn(labels, categories: Sequence, normalize: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``idx -> counts`` (or proportions) of ``labels[idx]`` over ``categories``, for the bootstraps."""
    pos = label_positions(labels, categories)
    K = len(list(categories))

    def fn(idx):
        c = np.bincount(pos[idx], minlength=K).astype(float)
        return c / len(idx) if normalize else c
    return fn


def smoothed_count_fn(labels, categories: Sequence, pseudocount: float) -> Callable[[np.ndarray], np.ndarray]:
    """``idx -> (n_c + a) / (N + a K)``: pseudocount-smoothed proportions of ``labels[idx]``."""
    counts = count_fn(labels, categories)
    K = len(list(categories))
    a = check_float("pseudocount", pseudocount, 0.0)
    return lambda idx: (counts(idx) + a) / (len(idx) + a * K)


def free_energy_fn(labels, categories: Sequence, loss, alpha, llc, m: float) -> Callable[[np.ndarray], np.ndarray]:
    """``idx -> P_F`` recomputed from the runs ``idx`` (cluster means of loss and λ̂, then
    ``F_c = m L_c + λ_c log m``, ``P_F ∝ exp(−F_c)``)."""
    from .tempering import cluster_properties, free_energy_distribution

    cats = list(categories)
    labels, loss, alpha, llc = (np.asarray(v) for v in (labels, loss, alpha, llc))

    def fn(idx):
        pr = cluster_properties(labels[idx], cats, loss[idx], alpha[idx], llc[idx])
        return free_energy_distribution(pr.loss, pr.llc, m, categories=cats).p_f
    return fn


def paired_bootstrap_divergences(dist_ref: Callable, dist_target: Callable, n: int, centroids, *,
                                 n_boot: int = 1000, level: float = 0.95, margin: float = DEFAULT_MARGIN,
                                 seed=None, smoothed_target: Optional[Callable] = None,
                                 categories: Optional[Sequence] = None,
                                 names: tuple = ("free energy", "SGD")) -> BootstrapDivergenceResult:
    """Divergences of two distributions computed from the same ``n`` SGD runs, bootstrapped by
    resampling runs once per replicate for both sides (paired).

    ``dist_ref(idx)`` and ``dist_target(idx)`` map a resample of run indices to a distribution
    over the categories; ``smoothed_target`` gives the target for the smoothed KL (default the
    target itself; the reference is used as is). ``seed``: int or numpy Generator.
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    margin = check_float("margin", margin, 0.0, strict_min=True)
    rng = check_generator(seed)
    smoothed_target = smoothed_target or dist_target

    def metrics(idx):
        p, q, qs = dist_ref(idx), dist_target(idx), smoothed_target(idx)
        return (p, q, qs), {"kl": kl_divergence(p, q), "kl_smoothed": kl_divergence(p, qs),
                            "js": js_divergence(p, q), "w1": wasserstein1(p, q, centroids)}

    (p, q, qs), point = metrics(np.arange(n))
    boot = {m: np.empty(n_boot) for m in point}
    for b in range(n_boot):
        _, vals = metrics(rng.integers(0, n, size=n))
        for m, v in vals.items():
            boot[m][b] = v
    P, Q, Qs = to_probabilities(p, names[0]), to_probabilities(q, names[1]), to_probabilities(qs, names[1])
    cats = list(categories) if categories is not None else list(range(P.size))
    notes = []
    if not np.isfinite(point["kl"]):
        notes.append(f"plug-in KL infinite: {names[1]} is zero where {names[0]} > 0")
    pt = DivergenceResult(cats, P, Q, P, Qs, point["kl"], point["kl_smoothed"], point["js"], point["w1"],
                          not np.isfinite(point["kl"]), float("nan"), None, None, tuple(names), notes)
    n_inf = {m: int(np.isinf(v).sum()) for m, v in boot.items()}
    bnotes = [f"{m}: {k} of {n_boot} bootstrap values infinite (zero cells)" for m, k in n_inf.items() if k]
    return BootstrapDivergenceResult(pt, boot, level, n_boot, margin, n_inf, None, f"runs ({n}), paired",
                                     f"runs ({n}), paired", bnotes)


def g_test_ess(counts_p, counts_q, ess_chain, diverged=None, categories: Optional[Sequence] = None) -> GTestResult:
    """G-test of homogeneity with ``counts_q`` (SGLD sample counts) scaled by
    ``scale = min(1, sum of the chains' ESS / number of samples)`` (non-diverged chains)."""
    ess = np.asarray(ess_chain, float)
    keep = np.ones(ess.size, bool) if diverged is None else ~np.asarray(diverged, bool)
    counts_q = np.asarray(counts_q)
    scale = float(np.nansum(ess[keep])) / float(counts_q.sum())
    scale = min(1.0, max(scale, 1e-12))
    g = g_test(np.asarray(counts_p).astype(float), counts_q * scale, categories)
    g.scale = scale
    g.notes.append(f"SGLD counts scaled by {scale:.4g} (effective sample size / samples)")
    return g


# --------------------------------------------------------------------------- H5

def _slug(reference: str) -> str:
    return reference.strip().lower().replace(" ", "-")


def test_h5(divergences: Optional[BootstrapDivergenceResult], reference: str, *, restates_seeding: bool = False,
            reference_converged: Optional[bool] = None, convergence_note: str = "",
            gtest: Optional[GTestResult] = None, metrics: Sequence[str] = H5_METRICS,
            statistic: str = "js", level: float = 0.95) -> HypothesisTest:
    """H5, tempered SGD ≈ ``reference`` ("SGLD", "free energy"), from the bootstrap of the
    divergences between them (None: no tempered distribution or no reference, untestable).

    Shown: ``statistic`` (JS by default, in nats) with the interval that decides (one-sided
    bounds at the bootstrap's level, i.e. coverage 2 level − 1). ``details`` has every metric's
    estimate, two-sided interval at the bootstrap's level, one-sided bounds and verdict, the
    margin and, when given, the G-test of homogeneity (H0 = homogeneity, so it is not the p-value
    of this equivalence claim and is not used by the verdict). ``level`` is used only when there
    is no bootstrap (the bootstrap's own level decides otherwise).
    """
    id_ = f"H5-{_slug(reference)}"
    claim = f"tempered SGD ≈ {reference} posterior"
    stat_label = {"js": f"JS({reference} ‖ tempered SGD) [nats]", "kl_smoothed": f"smoothed KL({reference} ‖ "
                  f"tempered SGD) [nats]", "kl": f"KL({reference} ‖ tempered SGD) [nats]",
                  "w1": f"W1({reference}, tempered SGD)"}[statistic]
    gdet = None if gtest is None else {"statistic": gtest.statistic, "pvalue": gtest.pvalue, "dof": gtest.dof,
                                       "scale": gtest.scale}
    if divergences is None:
        return HypothesisTest.decided(id_, claim, stat_label, None, None, None, None, "bootstrap equivalence",
                                      check_level(level),
                                      override=(Verdict.UNTESTABLE, "no tempered distribution or no reference"),
                                      details={"gtest": gdet})
    level, margin = divergences.level, divergences.margin
    eq_level = round(2 * level - 1, 12)
    point = divergences.point.metrics()
    per, decisions = {}, []
    for m in metrics:
        if m not in divergences.boot:
            continue
        lo, hi = one_sided_bounds(divergences.boot[m], level)
        v, why = decide(point[m], lo, hi, None, eq_level, threshold=margin, direction="less")
        decisions.append((m, v, why))
        ci = divergences.conf_int().loc[m]
        per[m] = {"estimate": point[m], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                  "lower": lo, "upper": hi, "equivalent": bool(divergences.equivalent[m]), "verdict": str(v)}
    verdict = all_of(decisions)
    if reference == "SGLD" and restates_seeding:
        verdict = (Verdict.INCONCLUSIVE, "no SGLD sample left its seed's cluster, so P_SGLD only restates the seeding"
                   + (" (divergences would pass the margin)" if verdict[0] is Verdict.SUPPORTED
                      else "; divergences also exceed the margin"))
    elif reference_converged is False:
        verdict = (Verdict.INCONCLUSIVE, "reference not converged"
                   + (f" ({convergence_note})" if convergence_note else "") + f"; divergences: {verdict[1]}")
    s = per.get(statistic, {"lower": float("nan"), "upper": float("nan"), "estimate": float("nan")})
    return HypothesisTest.decided(
        id_, claim, stat_label, s["estimate"], s["lower"], s["upper"], None,
        f"percentile bootstrap (resampling {divergences.unit_p} / {divergences.unit_q}); equivalence: one-sided "
        f"upper {level:.0%} bound < margin {margin:g} for {', '.join(per) or 'no metric'}", eq_level,
        threshold=margin, direction="less", override=verdict, window="clusters",
        details={"metrics": per, "margin": margin, "bootstrap_level": level, "gtest": gdet,
                 "n_boot": divergences.n_boot})


for _f in (test_h4, test_h5):
    _f.__test__ = False
