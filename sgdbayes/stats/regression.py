"""Cross-run regressions and correlations (docs/methods.md, "Cross-run regressions"; H6, H7).

For each pair (y, x) in a call:

* OLS ``y = b0 + b1 x`` with HC3 heteroskedasticity-robust standard errors
  (statsmodels ``cov_type="HC3"``), t-based interval and two-sided p for b1.
* Spearman rank correlation rho with a percentile bootstrap interval
  (resampling runs). Its p-value is **exact** for n <= 10 (the permutation
  distribution of rho, enumerated completely: :func:`spearman_exact_pvalues`)
  and scipy's t approximation above; ``p_method`` says which.
* Optionally (``eiv``, used for d_s vs lambda where both are noisy) an
  errors-in-variables fit: Deming regression with error-variance ratio
  ``delta = var(err_y)/var(err_x)`` (delta = 1: orthogonal distance
  regression), slope

      b1 = (s_yy - delta s_xx + sqrt((s_yy - delta s_xx)^2 + 4 delta s_xy^2)) / (2 s_xy)

  with a percentile bootstrap interval over runs and the bootstrap two-sided
  p-value ``2 min(P*(b1 <= 0), P*(b1 >= 0))`` (resolution 1/B). delta is given,
  or estimated as ``mean(se_y^2)/mean(se_x^2)`` from per-run standard errors.

All p-values of one call form one family and are Holm-adjusted with
``multipletests(method="holm")``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .._validation import (
    check_columns,
    check_generator,
    check_int,
    check_level,
    check_n_boot,
    check_nonnegative_array,
)
from .results import Result, estimate_row

__all__ = ["deming", "spearman", "spearman_exact_pvalues", "Correlation", "Regressions", "cross_run_regressions",
           "EXACT_MAX_N"]

#: rank correlations with at most this many pairs get the exact permutation p-value
EXACT_MAX_N = 10
FRAME_COLUMNS = ["parameter", "y", "x", "kind", "n", "estimate", "se", "ci_low", "ci_high", "df", "pvalue",
                 "pvalue_holm", "p_method", "note"]


def deming(x: np.ndarray, y: np.ndarray, delta: float = 1.0) -> tuple[float, float]:
    """Deming / orthogonal regression (delta = var(err_y)/var(err_x)); returns (intercept, slope)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if delta <= 0 or not np.isfinite(delta):
        raise ValueError("delta must be finite and > 0")
    mx, my = x.mean(), y.mean()
    sxx = np.mean((x - mx) ** 2)
    syy = np.mean((y - my) ** 2)
    sxy = np.mean((x - mx) * (y - my))
    if sxy == 0:
        raise ValueError("zero covariance: Deming slope undefined")
    d = syy - delta * sxx
    b1 = (d + math.sqrt(d * d + 4 * delta * sxy * sxy)) / (2 * sxy)
    return float(my - b1 * mx), float(b1)


def _spearman_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (average ranks for ties); NaN for rows with a constant input."""
    rx = stats.rankdata(X, axis=1)
    ry = stats.rankdata(Y, axis=1)
    rx = rx - rx.mean(1, keepdims=True)
    ry = ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    out = np.full(X.shape[0], np.nan)
    ok = den > 0
    out[ok] = (rx[ok] * ry[ok]).sum(1) / den[ok]
    return out


# --------------------------------------------------------------------------- exact Spearman p

def spearman_exact_pvalues(x, y) -> tuple[float, float, float]:
    """Exact permutation p-values of Spearman's rho: ``(two_sided, less, greater)``.

    Under H0 (no association) every pairing of the x-ranks with the y-ranks is equally likely;
    rho is an increasing function of ``S = sum_i r_x[pi(i)] r_y[i]`` (average ranks for ties),
    whose distribution over all n! permutations is enumerated exactly by dynamic programming
    over the subsets of x (ranks doubled to integers, so comparisons are exact).
    ``less = P(S <= s_obs)``, ``greater = P(S >= s_obs)``, two-sided = ``min(1, 2 min(less,
    greater))`` (the convention of ``scipy.stats.permutation_test``). For n <= 12.
    """
    a = np.rint(2 * stats.rankdata(np.asarray(x, float))).astype(np.int64)
    b = np.rint(2 * stats.rankdata(np.asarray(y, float))).astype(np.int64)
    n = a.size
    if b.size != n or n < 2:
        raise ValueError(f"x and y need the same length >= 2, got {a.size} and {b.size}")
    if n > 12:
        raise ValueError(f"exact enumeration is for n <= 12 pairs, got {n}")
    smax = int(np.sort(a) @ np.sort(b))
    layer = {0: np.zeros(smax + 1, dtype=np.int64)}
    layer[0][0] = 1
    for k in range(n):  # position k of y gets one unused x-rank
        nxt: dict[int, np.ndarray] = {}
        for mask, c in layer.items():
            for j in range(n):
                if mask >> j & 1:
                    continue
                w = int(a[j] * b[k])
                dst = nxt.get(mask | 1 << j)
                if dst is None:
                    dst = nxt[mask | 1 << j] = np.zeros(smax + 1, dtype=np.int64)
                dst[w:] += c[:smax + 1 - w]
        layer = nxt
    dist = layer[(1 << n) - 1]
    total = math.factorial(n)
    s_obs = int(a @ b)
    less = float(dist[:s_obs + 1].sum() / total)
    greater = float(dist[s_obs:].sum() / total)
    return min(1.0, 2 * min(less, greater)), less, greater


@dataclass
class Correlation(Result):
    """Spearman's rho between two per-run quantities (:func:`spearman`).

    ``estimate`` = rho; ``ci_low`` / ``ci_high`` its percentile bootstrap interval over runs at
    ``level`` (``n_boot_used`` of ``n_boot`` resamples had no constant column); ``pvalue`` the
    two-sided p-value of H0 rho = 0 and ``pvalue_less`` / ``pvalue_greater`` the one-sided ones,
    computed by ``p_method`` ("exact permutation" for n <= 10, else "t approximation").
    """

    x: str
    y: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    pvalue: float
    pvalue_less: float
    pvalue_greater: float
    p_method: str
    level: float = 0.95
    n_boot: int = 0
    n_boot_used: int = 0
    note: str = ""

    def _estimate_rows(self, level: float) -> list[dict]:
        if not math.isclose(level, self.level):
            raise ValueError(f"the bootstrap interval was computed at level {self.level:g}; "
                             f"recompute for level {level:g}")
        return [estimate_row(f"spearman:{self.y}~{self.x}", self.estimate, None, self.ci_low, self.ci_high,
                             self.pvalue)]


def spearman(x, y, *, n_boot: int = 1000, level: float = 0.95, seed=0, names: tuple = ("x", "y"),
             exact_max_n: int = EXACT_MAX_N) -> Correlation:
    """Spearman's rho of the finite pairs (x, y) with a bootstrap interval and exact small-sample p.

    ``seed`` (int or numpy Generator) draws the ``n_boot`` resamples of runs. Needs >= 4 pairs
    and no constant column (``ValueError`` otherwise).
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    exact_max_n = check_int("exact_max_n", exact_max_n, 0, 12)
    xv, yv = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(xv) & np.isfinite(yv)
    xv, yv = xv[ok], yv[ok]
    n = xv.size
    if n < 4 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        raise ValueError(f"Spearman rho of {names[1]} ~ {names[0]} not estimable (n={n}, constant column "
                         f"or too few runs)")
    rng = check_generator(seed)
    rho, p = stats.spearmanr(xv, yv)
    if n <= exact_max_n:
        p, p_less, p_greater = spearman_exact_pvalues(xv, yv)
        method = f"exact permutation (n = {n} <= {exact_max_n})"
    else:
        p_less = float(stats.spearmanr(xv, yv, alternative="less").pvalue)
        p_greater = float(stats.spearmanr(xv, yv, alternative="greater").pvalue)
        method = "t approximation"
    a = 1 - level
    idx = rng.integers(0, n, size=(n_boot, n))
    bs = _spearman_rows(xv[idx], yv[idx])
    bs = bs[np.isfinite(bs)]
    note = f"{n_boot - len(bs)} degenerate bootstrap resamples skipped" if len(bs) < n_boot else ""
    return Correlation(names[0], names[1], int(n), float(rho), float(np.quantile(bs, a / 2)),
                       float(np.quantile(bs, 1 - a / 2)), float(p), float(p_less), float(p_greater), method,
                       level, n_boot, int(len(bs)), note)


# --------------------------------------------------------------------------- the family

@dataclass
class Regressions(Result):
    """Results of :func:`cross_run_regressions`; ``frame`` has one row per test.

    Columns of ``frame``: parameter (``"<kind>:<y>~<x>"``), y, x, kind ("ols_hc3", "spearman",
    "deming"), n, estimate, se (HC3, OLS rows), ci_low, ci_high (at ``level``), df (t degrees of
    freedom, OLS rows), pvalue, pvalue_holm (Holm over the whole family), p_method, note.
    Intervals exist at ``level`` only (the bootstrap values are not kept).
    """

    frame: pd.DataFrame
    level: float = 0.95
    notes: list[str] = field(default_factory=list)

    def _estimate_rows(self, level: float) -> list[dict]:
        if not math.isclose(level, self.level):
            raise ValueError(f"the intervals (bootstrap ones among them) were computed at level {self.level:g}; "
                             f"recompute the regressions for level {level:g}")
        return [estimate_row(r.parameter, r.estimate, r.se, r.ci_low, r.ci_high, r.pvalue)
                for r in self.frame.itertuples(index=False)]

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> str:
        from tabulate import tabulate

        head = (f"Cross-run regressions ({int(self.level * 100)}% CIs; OLS with HC3 SEs, Spearman with "
                f"bootstrap CI over runs (exact p for n <= {EXACT_MAX_N}), Deming EIV with bootstrap CI; "
                f"p-values Holm-adjusted across the {len(self.frame)} tests)")
        cols = ["y", "x", "kind", "n", "estimate", "ci_low", "ci_high", "pvalue", "pvalue_holm", "p_method"]
        return head + "\n" + tabulate(self.frame[cols], headers="keys", showindex=False, floatfmt=".4g")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _deming_row(row: dict, runs, sub, xv, yv, yname, xname, eiv_se, delta, n_boot, rng, level):
    d = delta
    if d is None and eiv_se and yname in eiv_se and xname in eiv_se:
        sy = pd.to_numeric(runs.loc[sub.index, eiv_se[yname]], errors="coerce")
        sx = pd.to_numeric(runs.loc[sub.index, eiv_se[xname]], errors="coerce")
        check_nonnegative_array(f"column {eiv_se[yname]!r}", sy)
        check_nonnegative_array(f"column {eiv_se[xname]!r}", sx)
        if sy.notna().all() and sx.notna().all() and (sx ** 2).mean() > 0 and (sy ** 2).mean() > 0:
            d = float((sy ** 2).mean() / (sx ** 2).mean())
    if d is None:
        d = 1.0
        row["note"] = _join(row["note"], "delta unknown: orthogonal regression (delta = 1)")
    _, b1 = deming(xv, yv, d)
    n = len(xv)
    idx = rng.integers(0, n, size=(n_boot, n))
    bs = []
    for i in idx:
        try:
            bs.append(deming(xv[i], yv[i], d)[1])
        except ValueError:
            pass
    bs = np.asarray(bs)
    p = min(1.0, 2 * min(np.mean(bs <= 0), np.mean(bs >= 0)))
    p = max(p, 1.0 / (len(bs) + 1))  # bootstrap resolution
    a = 1 - level
    row.update(estimate=b1, ci_low=float(np.quantile(bs, a / 2)), ci_high=float(np.quantile(bs, 1 - a / 2)),
               pvalue=float(p), p_method="bootstrap (two-sided)", note=_join(row["note"], f"delta = {d:.4g}"))


def cross_run_regressions(
    runs: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    eiv: Sequence[tuple[str, str]] = (),
    eiv_se: Optional[dict] = None,
    delta: Optional[float] = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed=0,
) -> Regressions:
    """OLS (HC3) + Spearman (bootstrap CI) for each ``(y, x)`` in ``pairs``; Deming for ``eiv`` pairs.

    Rows with a missing y or x are dropped per pair (count in ``note``).
    ``eiv_se`` maps a column name to the column holding its per-run standard
    error (e.g. ``{"d_s": "d_s_se", "llc": "llc_se"}``, values >= 0), used to estimate delta
    when ``delta`` is None (falls back to delta = 1, orthogonal regression,
    noted). Pairs with fewer than 4 complete runs or a constant column are
    reported with ``note`` and no estimate (never a silent NaN: p is excluded
    from the Holm family and the reason is given). ``seed`` (int or numpy Generator) drives
    every bootstrap of the call, in the order OLS, Spearman, Deming.
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    check_columns(runs, list(dict.fromkeys(c for pr in [*pairs, *eiv] for c in pr)), "runs table")
    if eiv_se:
        check_columns(runs, [eiv_se[c] for pr in eiv for c in pr if c in eiv_se], "runs table (eiv_se)")
    rng = check_generator(seed)
    rows = []
    a = 1 - level
    todo = [(y, x, "ols_hc3") for y, x in pairs] + [(y, x, "spearman") for y, x in pairs] + \
           [(y, x, "deming") for y, x in eiv]
    nan = float("nan")
    for yname, xname, kind in todo:
        sub = runs[[yname, xname]].apply(pd.to_numeric, errors="coerce").dropna()
        n_drop = len(runs) - len(sub)
        xv, yv = sub[xname].to_numpy(float), sub[yname].to_numpy(float)
        n = len(sub)
        row = dict(parameter=f"{kind}:{yname}~{xname}", y=yname, x=xname, kind=kind, n=n, estimate=nan, se=nan,
                   ci_low=nan, ci_high=nan, df=nan, pvalue=nan, p_method="",
                   note=f"{n_drop} run(s) with missing values dropped" if n_drop else "")
        if n < 4 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
            row["note"] = _join(row["note"], f"not estimable (n={n}, constant column or too few runs)")
            rows.append(row)
            continue
        if kind == "ols_hc3":
            res = sm.OLS(yv, sm.add_constant(xv)).fit(cov_type="HC3", use_t=True)
            lo, hi = res.conf_int(a)[1]
            row.update(estimate=float(res.params[1]), se=float(res.bse[1]), ci_low=float(lo), ci_high=float(hi),
                       df=float(res.df_resid), pvalue=float(res.pvalues[1]), p_method="t (HC3)")
        elif kind == "spearman":
            c = spearman(xv, yv, n_boot=n_boot, level=level, seed=rng, names=(xname, yname))
            row.update(estimate=c.estimate, ci_low=c.ci_low, ci_high=c.ci_high, pvalue=c.pvalue,
                       p_method=c.p_method,
                       note=_join(row["note"], c.note, "exact permutation p-value" if c.p_method.startswith("exact")
                                  else ""))
        else:
            _deming_row(row, runs, sub, xv, yv, yname, xname, eiv_se, delta, n_boot, rng, level)
        rows.append(row)
    tab = pd.DataFrame(rows, columns=[c for c in FRAME_COLUMNS if c != "pvalue_holm"])
    tab["pvalue_holm"] = np.nan
    m = tab["pvalue"].notna()
    if m.any():
        tab.loc[m, "pvalue_holm"] = multipletests(tab.loc[m, "pvalue"].to_numpy(float), method="holm")[1]
    tab = tab[FRAME_COLUMNS]
    notes = [f"Holm family: {int(m.sum())} tests"]
    return Regressions(frame=tab, level=level, notes=notes)
