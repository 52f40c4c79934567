"""Verdicts of the diffusion hypotheses across runs (H1-H3) and of the crossover (docs/methods.md).

Every function returns a :class:`~sgdbayes.stats.results.HypothesisTest` whose verdict comes from
:func:`~sgdbayes.stats.results.decide` (the one rule), or from an override whose cause is stated
in ``reason``.

* :func:`as_hypothesis_test`: a :class:`~sgdbayes.stats.hypotheses.HypothesisResult` (per-run tests
  of H1, H2 or H3 with Holm, and the Wilcoxon signed-rank test across runs) as a HypothesisTest:
  statistic = median over the tested runs of ``values`` (α − 1/2, d_s − λ or d_s − λ̄), with a
  percentile bootstrap interval over runs; p = the Wilcoxon signed-rank p (alternative "less",
  H0 = the violation). The claim is ``median < 0``: supported when the whole interval is below 0
  and p < 1 − level, contradicted when it is above 0.
* :func:`test_h1_h3`: H1 (per window) and H2, H3 (per window) of a table of fitted runs, each
  as a HypothesisTest with a uniform id (``H1``, ``H1-whole``, ``H2``, ``H2-late``, ``H3``,
  ``H3-late``, optionally suffixed), and the per-run results behind them.
* :func:`test_crossover`: the slope change α_late − α_early of the two-segment fit (App B.3) < 0,
  decided by its interval alone.
* :func:`all_of`: the verdict of a claim that must hold for every one of several statistics
  (e.g. H5's equivalence for smoothed KL, JS and W1).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._validation import check_level, check_pvalue
from .results import HypothesisTest, Verdict
from .summaries import bootstrap_ci

__all__ = ["as_hypothesis_test", "test_h1_h3", "test_crossover", "all_of", "WILCOXON_TEST"]

WILCOXON_TEST = "Wilcoxon signed-rank across runs, one-sided H0: median ≥ 0"


def as_hypothesis_test(hres, claim: str, statistic: str, values, level: float = 0.95, seed=0,
                       id: Optional[str] = None, n_boot: int = 2000) -> HypothesisTest:
    """The across-run verdict of H1, H2 or H3 from its per-run :class:`HypothesisResult`.

    ``values`` are the per-run differences the claim says are below 0 (non-finite ones are left
    out); ``seed`` drives the bootstrap of their median. ``details`` carries the per-run view:
    ``n_support_holm`` (runs with Holm-adjusted one-sided p < 1 − level), its share, the share
    of runs whose one-sided upper bound is below the threshold, and the exact sign test
    (``sign_p``: binomial, one-sided, P(value < 0) > 1/2; ``n_below``).
    """
    from scipy.stats import binomtest

    level = check_level(level)
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    med = float(np.median(v)) if v.size else float("nan")
    lo, hi = bootstrap_ci(v, "median", n_boot=n_boot, level=level, seed=seed)
    p = hres.pvalue
    if p is not None:
        p = check_pvalue(p, f"{hres.id} across-run p-value")
    n_below = int((v < 0).sum())
    n_nonzero = int((v != 0).sum())
    sign_p = float(binomtest(n_below, n_nonzero, 0.5, alternative="greater").pvalue) if n_nonzero else None
    override = None
    if hres.n_tested == 0 or v.size == 0:
        override = (Verdict.UNTESTABLE, "no run could be tested")
    elif v.size < 3:
        override = (Verdict.UNTESTABLE, f"only {v.size} run(s): the median's bootstrap interval needs at least 3")
    details = {"n_support_holm": hres.n_reject,
               "share_support_holm": (hres.n_reject / hres.n_tested) if hres.n_tested else None,
               "share_upper_below": hres.share_upper_below, "sign_p": sign_p, "n_below": n_below,
               "n_boot": int(n_boot)}
    test = f"{hres.test} across runs, one-sided" if hres.test else WILCOXON_TEST
    return HypothesisTest.decided(id or hres.id, claim, statistic, med, lo, hi, p, test, level,
                                  threshold=0.0, direction="less", override=override, window=hres.window,
                                  n_tested=hres.n_tested, n_excluded=int(len(hres.excluded)),
                                  notes=list(hres.notes), details=details)


CLAIMS = {"H1-late": ("late SGD is sub-diffusive: α < 1/2 after t_c (eq 11, d_walk > 2)",
                       "median over runs of α_late − 1/2"),
          "H1-whole": ("sub-diffusion over the whole range (the paper's single fit)", "median over runs of α_whole − 1/2"),
          "H2": ("d_s ≤ λ (Lemma 3.4) ⇔ α ≤ 1/2 for λ > 0", "median over runs of d_s − λ, λ > 0"),
          "H3": ("d_s ≤ λ̄ (Cor 3.3) ⇔ α ≤ λ̄/(2λ)", "median over runs of d_s − λ̄, λ > 0")}


def test_h1_h3(runs, level: float = 0.95, seed: int = 0, n_boot: int = 2000, *, h1_windows: Sequence[str] = ("late",),
               windows: Sequence[str] = ("whole", "late"), suffix: str = "") -> tuple[list, dict]:
    """H1 on each of ``h1_windows`` and H2, H3 on each of ``windows`` across the runs of ``runs`` (one
    row per fitted run: the columns of ``DiffusionFit.to_row``, with ``llc`` / ``llc_mean`` for H2 /
    H3; H2 and H3 are left out without λ, H3 without λ̄).

    Ids: ``H1`` (late window; ``H1-whole`` for the whole range), ``H2`` / ``H3`` (whole range, the
    paper's d_s; ``H2-late`` / ``H3-late``), each followed by ``-suffix`` when given. The medians'
    bootstraps start from ``seed`` (H1 late), ``seed + 1`` (H1 whole and H2) and ``seed + 2`` (H3).
    Returns the tests and their per-run results (:class:`~sgdbayes.stats.hypotheses.HypothesisResult`)
    keyed ``H1_late``, ``H2_whole``, ....
    """
    from .hypotheses import test_h1, test_h2, test_h3

    sfx = f"-{suffix}" if suffix else ""
    tests, per = [], {}
    for win in h1_windows:
        pre = "" if win == "whole" else "late_"
        h = test_h1(runs, win, level)
        claim, stat = CLAIMS[f"H1-{win}"]
        tests.append(as_hypothesis_test(h, claim, stat, runs[pre + "alpha"].to_numpy(float) - 0.5, level,
                                        seed + (win == "whole"), ("H1" if win == "late" else "H1-whole") + sfx,
                                        n_boot=n_boot))
        per[f"H1_{win}"] = h
    has_llc = "llc" in runs and runs["llc"].notna().any()
    has_bar = has_llc and "llc_mean" in runs and runs["llc_mean"].notna().any()
    lam = runs["llc"].to_numpy(float) if has_llc else None
    for win in windows if has_llc else ():
        d_s = runs[("" if win == "whole" else "late_") + "d_s"].to_numpy(float)
        w = "" if win == "whole" else f"-{win}"
        for name, test, ref, off, ok in (("H2", test_h2, lam, 1, True),
                                         ("H3", test_h3, runs["llc_mean"].to_numpy(float) if has_bar else None, 2,
                                          has_bar)):
            if not ok:
                continue
            h = test(runs, win, level)
            claim, stat = CLAIMS[name]
            tests.append(as_hypothesis_test(h, claim, stat, (d_s - ref)[lam > 0], level, seed + off, name + w + sfx,
                                            n_boot=n_boot))
            per[f"{name}_{win}"] = h
    return tests, per


def test_crossover(delta: float, ci_low: float, ci_high: float, level: float = 0.95,
                   window: str = "mean curve") -> HypothesisTest:
    """Early super-diffusion gives way to slower late diffusion (App B.3): α_late − α_early < 0.

    ``delta`` and its interval come from the two-segment (hinge) fit of the displacement curve
    (parametric AR(1) bootstrap, no p-value): decided by the interval alone.
    """
    return HypothesisTest.decided(
        "crossover", "early super-diffusion gives way to slower late diffusion (App B.3)",
        "α_late − α_early of the two-segment fit", delta, ci_low, ci_high, None,
        "parametric AR(1) bootstrap interval (no p-value)", check_level(level), threshold=0.0, direction="less",
        window=window, n_tested=1)


def all_of(decisions: Sequence[tuple[str, Verdict, str]]) -> tuple[Verdict, str]:
    """Verdict of a claim that must hold for every statistic: ``decisions`` = [(name, verdict, reason)].

    supported when every statistic is supported; contradicted when any is contradicted;
    untestable when none could be decided; otherwise not supported. The reason names the
    statistics that decided.
    """
    if not decisions:
        return Verdict.UNTESTABLE, "no statistic could be computed"
    verdicts = [v for _, v, _ in decisions]
    if all(v is Verdict.SUPPORTED for v in verdicts):
        return Verdict.SUPPORTED, "every statistic supports it: " + "; ".join(f"{n}: {r}" for n, _, r in decisions)
    bad = [(n, r) for n, v, r in decisions if v is Verdict.CONTRADICTED]
    if bad:
        return Verdict.CONTRADICTED, "contradicted by " + "; ".join(f"{n}: {r}" for n, r in bad)
    if all(v is Verdict.UNTESTABLE for v in verdicts):
        return Verdict.UNTESTABLE, "no statistic could be computed"
    fail = [(n, r) for n, v, r in decisions if v is not Verdict.SUPPORTED]
    return Verdict.NOT_SUPPORTED, "not shown for " + "; ".join(f"{n}: {r}" for n, r in fail)


for _f in (test_crossover, test_h1_h3):
    _f.__test__ = False
