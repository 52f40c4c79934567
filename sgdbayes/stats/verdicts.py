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

__all__ = ["as_hypothesis_test", "test_crossover", "all_of", "WILCOXON_TEST"]

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
    p = hres.wilcoxon_p
    if p is not None:
        p = check_pvalue(p, f"{hres.name} Wilcoxon p-value")
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
    return HypothesisTest.decided(id or hres.name, claim, statistic, med, lo, hi, p, WILCOXON_TEST, level,
                                  threshold=0.0, direction="less", override=override, window=hres.window,
                                  n_tested=hres.n_tested, n_excluded=int(len(hres.excluded)),
                                  notes=list(hres.notes), details=details)


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


for _f in (test_crossover,):
    _f.__test__ = False
