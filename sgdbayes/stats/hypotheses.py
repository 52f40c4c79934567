"""Tests of the diffusion hypotheses H1-H3 (docs/methods.md#the-hypotheses), per run and across runs.

The claim is always the alternative; H0 is its violation.

* **H1** (sec 3.1.1, eq 11): late SGD is sub-diffusive, ``R ~ t^alpha`` with
  ``alpha < 1/2`` (``d_walk = 1/alpha > 2``). Per run: H0 alpha >= 1/2 vs
  H1 alpha < 1/2.
* **H2** (Lemma 3.4): ``d_s <= lambda``. With ``d_s = 2 lambda alpha``
  (eq 17) and ``lambda > 0`` this is *equivalent* to ``alpha <= 1/2``: as
  measured by eq 17, Lemma 3.4 is a test of sub-diffusion and lambda enters only
  through its sign. Per run (lambda > 0): H0 alpha >= 1/2 vs H1 alpha < 1/2.
  Runs with lambda <= 0 are reported separately and excluded from the per-run
  H2/H3 tests (for them d_s <= lambda would mean alpha >= 1/2).
* **H3** (Cor 3.3, eq 16): ``d_s <= lambda_bar`` (time-averaged LLC), i.e.
  ``alpha <= theta = lambda_bar / (2 lambda_final)`` for lambda_final > 0.
  Per run: ``z = (alpha - theta) / sqrt(se_alpha^2 + se_theta^2)`` with
  ``se_theta`` by the delta method from se(lambda_bar), se(lambda_final)
  (their correlation is ignored).

Per-run p-values are one-sided; they are Holm-corrected across runs (:func:`holm`,
identical to ``statsmodels.stats.multitest.multipletests(method="holm")``,
explicitly Holm, not the Holm-Sidak default). Across runs: Wilcoxon signed-rank on
``d_s - lambda`` (H2) or ``d_s - lambda_bar`` (H3) with ``alternative="less"``,
an exact one-sided sign test, the median of the differences with a
distribution-free (order-statistic) interval, and the share of runs whose upper
95 % bound lies below the threshold.

Small samples get exact p-values: the Wilcoxon test uses its exact null
distribution for up to 50 non-zero differences without ties, the exact
permutation (sign-flip) distribution for up to 16 with ties, and the normal
approximation otherwise; ``test`` says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .results import Result, estimate_row

__all__ = ["HypothesisResult", "holm", "wilcoxon_less", "sign_test_less", "median_interval", "test_h1",
           "test_h2", "test_h3", "test_all"]


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: ``max_{j <= i} min(1, (m - j + 1) p_(j))`` for the i-th smallest.

    Identical to ``multipletests(p, method="holm")[1]`` (a test checks it; explicitly Holm, not the
    Holm-Sidak default), computed here because statsmodels 0.15 runs a full garbage collection on
    every call (0.2 s), which dominated the size checks of the coverage suite.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p
    if not np.all(np.isfinite(p)):
        raise ValueError("p-values must be finite for the Holm correction")
    from .._validation import check_pvalue

    for v in p:
        check_pvalue(float(v))
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def wilcoxon_less(diff: Sequence[float]) -> tuple[Optional[float], Optional[float], int, str]:
    """One-sided Wilcoxon signed-rank test of H1: median(diff) < 0 (zeros dropped).

    Returns (statistic, pvalue, n_nonzero, method); the method is ``"exact"``
    (<= 50 differences, no ties), ``"exact permutation"`` (<= 16, ties) or
    ``"normal approximation"``. (None, None, n, reason) when fewer than 2
    non-zero differences remain.
    """
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if d.size < 2:
        return None, None, int(d.size), "fewer than 2 non-zero differences"
    ties = np.unique(np.abs(d)).size < d.size
    if d.size <= 50 and not ties:
        method, arg = "exact", "exact"
    elif d.size <= 16:
        method, arg = "exact permutation", stats.PermutationMethod(n_resamples=np.inf)
    else:
        method, arg = "normal approximation", "asymptotic"
    res = stats.wilcoxon(d, alternative="less", method=arg)
    return float(res.statistic), float(res.pvalue), int(d.size), method


def sign_test_less(diff: Sequence[float]) -> tuple[Optional[float], int, int]:
    """Exact one-sided sign test of H1: P(diff < 0) > 1/2 (binomial; zeros dropped).

    Returns (pvalue, n_below, n_nonzero); pvalue None without non-zero differences.
    """
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    below = int((d < 0).sum())
    if d.size == 0:
        return None, below, 0
    return float(stats.binomtest(below, d.size, 0.5, alternative="greater").pvalue), below, int(d.size)


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics ``[x_(k), x_(n+1-k)]``.

    ``k`` is the largest integer with ``P(Bin(n, 1/2) < k) <= (1 - level)/2``, so
    the coverage is at least ``level`` for any continuous distribution; NaN when
    n is too small to reach ``level`` (n < 6 at 95 %).
    """
    v = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
    n = v.size
    if n == 0:
        return (math.nan, math.nan)
    k = int(stats.binom.ppf((1 - level) / 2, n, 0.5))  # P(B <= k) >= a/2; step back while P(B < k) > a/2
    while k > 0 and stats.binom.cdf(k - 1, n, 0.5) > (1 - level) / 2:
        k -= 1
    if k < 1:
        return (math.nan, math.nan)
    return float(v[k - 1]), float(v[n - k])


@dataclass
class HypothesisResult(Result):
    """Per-run and across-run outcome of one hypothesis.

    ``per_run`` has one row per tested run: run, estimate, threshold, se,
    upper (one-sided upper bound at ``level``), pvalue (one-sided), pvalue_holm,
    reject (pvalue_holm < 1 - level). ``excluded`` lists runs not tested (e.g.
    lambda <= 0) with the reason. Across runs: the Wilcoxon signed-rank test of
    the differences ``diffs`` (``statistic``, ``pvalue``, ``n``, method in
    ``test``), the exact sign test (``sign_pvalue``, ``n_below``) and the median
    difference ``estimate`` with its distribution-free interval (``conf_int``).
    """

    id: str
    claim: str
    alternative: str
    window: str
    per_run: pd.DataFrame
    excluded: pd.DataFrame
    diffs: np.ndarray
    statistic: Optional[float] = None
    pvalue: Optional[float] = None
    n: int = 0
    test: str = ""
    sign_pvalue: Optional[float] = None
    n_below: int = 0
    level: float = 0.95
    notes: list = field(default_factory=list)

    @property
    def estimate(self) -> Optional[float]:
        """Median over tested runs of the across-run difference (e.g. alpha - 1/2)."""
        d = np.asarray(self.diffs, float)
        d = d[np.isfinite(d)]
        return float(np.median(d)) if d.size else None

    @property
    def n_tested(self) -> int:
        return int(len(self.per_run))

    @property
    def n_reject(self) -> int:
        return int(self.per_run["reject"].sum()) if self.n_tested else 0

    @property
    def share_upper_below(self) -> Optional[float]:
        """Share of tested runs whose one-sided upper bound lies below the threshold."""
        if not self.n_tested:
            return None
        return float((self.per_run["upper"] < self.per_run["threshold"]).mean())

    def _estimate_rows(self, level: float) -> list[dict]:
        lo, hi = median_interval(self.diffs, level)
        return [estimate_row(self.id, self.estimate, None, lo, hi, self.pvalue)]

    def summary(self) -> str:
        """One sentence: per-run support after Holm, upper bounds, the across-run tests."""
        a = 1 - self.level
        if not self.n_tested:
            return f"{self.id}: no run could be tested ({len(self.excluded)} excluded)."
        parts = [f"{self.id} ({self.claim}; window: {self.window}): "
                 f"{self.n_reject}/{self.n_tested} runs support the claim after Holm at {a:g}",
                 f"upper bound below threshold in {100 * self.share_upper_below:.0f}% of runs"]
        if self.pvalue is not None:
            sup = "supports" if self.pvalue < a else "does not support"
            parts.append(f"{self.test} across runs (alternative='less', n={self.n}) "
                         f"p-value = {self.pvalue:.3g}: {sup} the claim")
        if self.sign_pvalue is not None:
            parts.append(f"sign test: {self.n_below} of {self.n} below, p-value = {self.sign_pvalue:.3g}")
        if len(self.excluded):
            parts.append(f"{len(self.excluded)} run(s) excluded and reported separately")
        return "; ".join(parts) + "."

    def to_frame(self) -> pd.DataFrame:
        """One row: the across-run summary in the flat-table vocabulary."""
        lo, hi = median_interval(self.diffs, self.level)
        return pd.DataFrame([{"id": self.id, "claim": self.claim, "window": self.window,
                              "n_tested": self.n_tested, "n_excluded": len(self.excluded),
                              "n_support_holm": self.n_reject, "share_upper_below": self.share_upper_below,
                              "n": self.n, "estimate": self.estimate, "ci_low": lo, "ci_high": hi,
                              "pvalue": self.pvalue, "test": self.test, "sign_pvalue": self.sign_pvalue,
                              "n_below": self.n_below}])

    def per_run_frame(self) -> pd.DataFrame:
        """Per-run table (tested runs, then excluded ones with ``reason``)."""
        out = self.per_run.assign(hypothesis=self.id, tested=True, reason="")
        if len(self.excluded):
            ex = self.excluded.assign(hypothesis=self.id, tested=False)
            out = pd.concat([out, ex], ignore_index=True)
        return out


def _across(diff) -> dict:
    """Keyword arguments of HypothesisResult for the across-run tests of ``diff``."""
    d = np.asarray(diff, dtype=float)
    stat, p, n, method = wilcoxon_less(d)
    sp, below, _ = sign_test_less(d)
    return dict(diffs=d, statistic=stat, pvalue=p, n=n, test=f"Wilcoxon signed-rank ({method})",
                sign_pvalue=sp, n_below=below)


def _one_sided(est, thr, se, df, level):
    est, thr, se = (np.asarray(v, dtype=float) for v in (est, thr, se))
    if np.any(~np.isfinite(se)) or np.any(se <= 0):
        raise ValueError("standard errors must be finite and > 0")
    tstat = (est - thr) / se
    if df is None:
        p = stats.norm.cdf(tstat)
        upper = est + stats.norm.ppf(level) * se
    else:
        df = np.asarray(df, dtype=float)
        p = stats.t.cdf(tstat, df)
        upper = est + stats.t.ppf(level, df) * se
    return p, upper


def _frame(runs, est, thr, se, df, level, extra=None):
    p, upper = _one_sided(est, thr, se, df, level)
    ph = holm(p)
    d = {"run": list(runs), "estimate": est, "threshold": thr, "se": se, "upper": upper,
         "pvalue": p, "pvalue_holm": ph, "reject": ph < (1 - level)}
    if extra:
        d.update(extra)
    return pd.DataFrame(d)


def _cols(df: pd.DataFrame, window: str, level: float = 0.95, need_llc: bool = False):
    """Column names of ``window``'s fit, after checking ``level`` and that the table has them."""
    from .._validation import check_columns, check_level

    check_level(level)
    if window not in ("whole", "late"):
        raise ValueError(f"window must be 'whole' or 'late', got {window!r}")
    pre = "" if window == "whole" else "late_"
    names = pre + "alpha", pre + "alpha_se", pre + "d_s"
    check_columns(df, ["run", *names[:2]] + ([names[2], "llc"] if need_llc else []), "runs table")
    return names


def _dfs(t: pd.DataFrame, window: str):
    """Student-t degrees of freedom of each run's slope fit, if the table carries them (else normal)."""
    col = ("" if window == "whole" else "late_") + "alpha_df"
    if col in t and t[col].notna().all():
        return t[col].to_numpy(float)
    return None


def test_h1(runs: pd.DataFrame, window: str = "late", level: float = 0.95) -> HypothesisResult:
    """H1: alpha < 1/2 per run (eq 11, d_walk > 2) on ``window`` ("late" or "whole").

    ``runs`` needs columns run, alpha/alpha_se (whole) or late_alpha/late_alpha_se.
    Runs without a fit in that window are excluded and listed. Across runs:
    Wilcoxon on alpha - 1/2, alternative "less".
    """
    a, se, _ = _cols(runs, window, level)
    ok = runs[a].notna() & runs[se].notna()
    tested = runs[ok]
    ex = runs.loc[~ok, ["run"]].assign(reason=f"no {window}-window fit")
    pr = _frame(tested["run"], tested[a].to_numpy(float), np.full(len(tested), 0.5),
                tested[se].to_numpy(float), _dfs(tested, window), level)
    return HypothesisResult("H1", "alpha < 1/2 (sub-diffusion, d_walk > 2)", "alpha < 1/2", window,
                            pr, ex, level=level, **_across(tested[a].to_numpy(float) - 0.5))


def test_h2(runs: pd.DataFrame, window: str = "whole", level: float = 0.95) -> HypothesisResult:
    """H2 (Lemma 3.4): d_s <= lambda, i.e. alpha <= 1/2 when lambda > 0 (d_s = 2 lambda alpha, eq 17).

    Per run, lambda > 0: one-sided test of alpha < 1/2 (identical to H1's test:
    lambda enters only through its sign). Runs with lambda <= 0 or no LLC are
    excluded and listed. Across runs (lambda > 0): Wilcoxon signed-rank on
    ``d_s - lambda`` with ``alternative="less"``.
    """
    a, se, ds = _cols(runs, window, level, need_llc=True)
    has = runs["llc"].notna() & runs[a].notna() & runs[se].notna()
    pos = has & (runs["llc"] > 0)
    tested = runs[pos]
    ex = pd.concat([
        runs.loc[~has, ["run"]].assign(reason="no LLC or no fit in window"),
        runs.loc[has & (runs["llc"] <= 0), ["run", "llc"]].assign(reason="lambda <= 0"),
    ], ignore_index=True)
    pr = _frame(tested["run"], tested[a].to_numpy(float), np.full(len(tested), 0.5),
                tested[se].to_numpy(float), _dfs(tested, window), level,
                extra={"d_s_minus_lambda": (tested[ds] - tested["llc"]).to_numpy(float)})
    res = HypothesisResult("H2", "d_s <= lambda (<=> alpha <= 1/2 for lambda > 0)", "alpha < 1/2", window,
                           pr, ex, level=level,
                           **_across(tested[ds].to_numpy(float) - tested["llc"].to_numpy(float)))
    res.notes.append("d_s = 2 lambda alpha, so for lambda > 0 the per-run test of d_s <= lambda is the "
                     "test of alpha < 1/2; lambda's value enters only through its sign.")
    return res


def test_h3(runs: pd.DataFrame, window: str = "whole", level: float = 0.95) -> HypothesisResult:
    """H3 (Cor 3.3, eq 16): d_s <= lambda_bar, i.e. alpha <= theta = lambda_bar / (2 lambda_final).

    Needs columns llc (final), llc_se, llc_mean (lambda_bar: mean of all LLC
    estimates along training) and llc_mean_se. Per run (lambda_final > 0):
    ``z = (alpha - theta)/sqrt(se_alpha^2 + se_theta^2)``,
    ``se_theta^2 = (se_bar / (2 lam))^2 + (lam_bar se_lam / (2 lam^2))^2``
    (delta method, correlation ignored). Across runs: Wilcoxon on
    ``d_s - lambda_bar``, alternative "less".
    """
    a, se, ds = _cols(runs, window, level, need_llc=True)
    need = ["llc", "llc_mean"]
    from .._validation import check_columns

    check_columns(runs, need, "runs table")
    has = runs[need].notna().all(axis=1) & runs[a].notna() & runs[se].notna()
    pos = has & (runs["llc"] > 0)
    t = runs[pos]
    lam = t["llc"].to_numpy(float)
    lam_se = t["llc_se"].fillna(0).to_numpy(float) if "llc_se" in t else np.zeros(len(t))
    bar = t["llc_mean"].to_numpy(float)
    bar_se = t["llc_mean_se"].fillna(0).to_numpy(float) if "llc_mean_se" in t else np.zeros(len(t))
    theta = bar / (2 * lam)
    se_theta2 = (bar_se / (2 * lam)) ** 2 + (bar * lam_se / (2 * lam ** 2)) ** 2
    se_tot = np.sqrt(t[se].to_numpy(float) ** 2 + se_theta2)
    ex = pd.concat([
        runs.loc[~has, ["run"]].assign(reason="no LLC / lambda_bar or no fit in window"),
        runs.loc[has & (runs["llc"] <= 0), ["run", "llc"]].assign(reason="lambda_final <= 0"),
    ], ignore_index=True)
    pr = _frame(t["run"], t[a].to_numpy(float), theta, se_tot, _dfs(t, window), level,
                extra={"d_s_minus_lambda_bar": (t[ds] - t["llc_mean"]).to_numpy(float)})
    return HypothesisResult("H3", "d_s <= lambda_bar (<=> alpha <= lambda_bar/(2 lambda_final))",
                            "alpha < lambda_bar/(2 lambda_final)", window, pr, ex, level=level,
                            **_across(t[ds].to_numpy(float) - bar))


def test_all(runs: pd.DataFrame, level: float = 0.95) -> list[HypothesisResult]:
    """H1 on the late window, H2 and H3 on whole-range and late windows (where the columns exist)."""
    out = []
    if "late_alpha" in runs:
        out.append(test_h1(runs, "late", level))
    out.append(test_h1(runs, "whole", level))
    if "llc" in runs and runs["llc"].notna().any():
        for win in ("whole", "late"):
            if win == "late" and "late_alpha" not in runs:
                continue
            out.append(test_h2(runs, win, level))
            if "llc_mean" in runs and runs["llc_mean"].notna().any():
                out.append(test_h3(runs, win, level))
    return out


# keep pytest from collecting these as tests when imported into a test module
for _f in (test_h1, test_h2, test_h3, test_all):
    _f.__test__ = False
