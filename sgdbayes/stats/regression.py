"""Cross-run regressions and correlations (SCIENCE.md sec 4, H6, H7).

For each pair (y, x) in a call:

* OLS ``y = b0 + b1 x`` with HC3 heteroskedasticity-robust standard errors
  (statsmodels ``cov_type="HC3"``), t-based interval and two-sided p for b1.
* Spearman rank correlation rho with a percentile bootstrap interval
  (resampling runs) and scipy's two-sided p-value.
* Optionally (``eiv=True``, used for d_s vs lambda where both are noisy) an
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
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

__all__ = ["deming", "Regressions", "cross_run_regressions"]


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


@dataclass
class Regressions:
    """Results of :func:`cross_run_regressions`; ``table`` has one row per test.

    Columns: y, x, kind ("ols_hc3", "spearman", "deming"), n, estimate, lo, hi,
    p, p_holm, note. ``summary()`` renders it as text.
    """

    table: pd.DataFrame
    level: float = 0.95
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def conf_int(self) -> pd.DataFrame:
        return self.table[["y", "x", "kind", "lo", "hi"]].copy()

    def summary(self) -> str:
        from tabulate import tabulate

        head = (f"Cross-run regressions ({int(self.level * 100)}% CIs; OLS with HC3 SEs, Spearman with "
                f"bootstrap CI over runs, Deming EIV with bootstrap CI; p-values Holm-adjusted "
                f"across the {len(self.table)} tests)")
        cols = ["y", "x", "kind", "n", "estimate", "lo", "hi", "p", "p_holm"]
        return head + "\n" + tabulate(self.table[cols], headers="keys", showindex=False, floatfmt=".4g")


def cross_run_regressions(
    runs: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    eiv: Sequence[tuple[str, str]] = (),
    eiv_se: Optional[dict] = None,
    delta: Optional[float] = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: Union[int, np.random.Generator, None] = 0,
) -> Regressions:
    """OLS (HC3) + Spearman (bootstrap CI) for each ``(y, x)`` in ``pairs``; Deming for ``eiv`` pairs.

    Rows with a missing y or x are dropped per pair (count in ``note``).
    ``eiv_se`` maps a column name to the column holding its per-run standard
    error (e.g. ``{"d_s": "d_s_se", "llc": "llc_se"}``), used to estimate delta
    when ``delta`` is None (falls back to delta = 1, orthogonal regression,
    noted). Pairs with fewer than 4 complete runs or a constant column are
    reported with ``note`` and no estimate (never a silent NaN: p is excluded
    from the Holm family and the reason is given).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rows = []
    a = 1 - level
    qlo, qhi = a / 2, 1 - a / 2
    todo = [(y, x, "ols_hc3") for y, x in pairs] + [(y, x, "spearman") for y, x in pairs] + \
           [(y, x, "deming") for y, x in eiv]
    for yname, xname, kind in todo:
        for c in (yname, xname):
            if c not in runs:
                raise KeyError(f"column {c!r} not in runs table")
        sub = runs[[yname, xname]].apply(pd.to_numeric, errors="coerce").dropna()
        n_drop = len(runs) - len(sub)
        xv, yv = sub[xname].to_numpy(float), sub[yname].to_numpy(float)
        n = len(sub)
        row = dict(y=yname, x=xname, kind=kind, n=n, estimate=None, lo=None, hi=None, p=None,
                   note=f"{n_drop} run(s) with missing values dropped" if n_drop else "")
        if n < 4 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
            row["note"] = (row["note"] + "; " if row["note"] else "") + \
                f"not estimable (n={n}, constant column or too few runs)"
            rows.append(row)
            continue
        if kind == "ols_hc3":
            res = sm.OLS(yv, sm.add_constant(xv)).fit(cov_type="HC3", use_t=True)
            lo, hi = res.conf_int(a)[1]
            row.update(estimate=float(res.params[1]), lo=float(lo), hi=float(hi), p=float(res.pvalues[1]))
        elif kind == "spearman":
            rho, p = stats.spearmanr(xv, yv)
            idx = rng.integers(0, n, size=(n_boot, n))
            bs = _spearman_rows(xv[idx], yv[idx])
            bs = bs[np.isfinite(bs)]
            row.update(estimate=float(rho), lo=float(np.quantile(bs, qlo)), hi=float(np.quantile(bs, qhi)),
                       p=float(p))
            if len(bs) < n_boot:
                row["note"] = (row["note"] + "; " if row["note"] else "") + \
                    f"{n_boot - len(bs)} degenerate bootstrap resamples skipped"
        else:
            d = delta
            if d is None and eiv_se and yname in eiv_se and xname in eiv_se:
                sy = pd.to_numeric(runs.loc[sub.index, eiv_se[yname]], errors="coerce")
                sx = pd.to_numeric(runs.loc[sub.index, eiv_se[xname]], errors="coerce")
                if sy.notna().all() and sx.notna().all() and (sx ** 2).mean() > 0 and (sy ** 2).mean() > 0:
                    d = float((sy ** 2).mean() / (sx ** 2).mean())
            if d is None:
                d = 1.0
                row["note"] = (row["note"] + "; " if row["note"] else "") + \
                    "delta unknown: orthogonal regression (delta = 1)"
            _, b1 = deming(xv, yv, d)
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
            row.update(estimate=b1, lo=float(np.quantile(bs, qlo)), hi=float(np.quantile(bs, qhi)),
                       p=float(p))
            row["note"] = (row["note"] + "; " if row["note"] else "") + f"delta = {d:.4g}"
        rows.append(row)
    tab = pd.DataFrame(rows, columns=["y", "x", "kind", "n", "estimate", "lo", "hi", "p", "note"])
    tab["p_holm"] = np.nan
    m = tab["p"].notna()
    if m.any():
        tab.loc[m, "p_holm"] = multipletests(tab.loc[m, "p"].to_numpy(float), method="holm")[1]
    tab = tab[["y", "x", "kind", "n", "estimate", "lo", "hi", "p", "p_holm", "note"]]
    notes = [f"Holm family: {int(m.sum())} tests"]
    return Regressions(table=tab, level=level, notes=notes)
