"""Straight-line fits of log R on log t (eq 17) on one window of a curve.

``log R(t) = alpha log t + c``. The default interval (``method="ar1-boot"``) is
described in :mod:`sgdbayes.stats.diffusion` and docs/intervals.md; the error
model and its calibration live in :mod:`sgdbayes.stats.ar_errors`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
from scipy import stats

from . import ar_errors as ae
from .results import Result, estimate_row

__all__ = ["SlopeFit", "log_grid", "fit_loglog", "slope_batch", "METHODS", "FLAG_RHO_UPPER", "FLAG_MIN_POINTS"]

METHODS = ("ar1-boot", "ar1", "pw-boot", "hac", "ols")
#: runs flagged: rho's upper bound near 1, where the suite measured coverage 0.88-0.93 for the
#: highest correlations (docs/intervals.md), and fits on fewer points than the suite checked
FLAG_RHO_UPPER = 0.99
FLAG_MIN_POINTS = 10


# --------------------------------------------------------------------------- grid
def log_grid(steps: Sequence[float], n_points: int = 64) -> np.ndarray:
    """Indices of ``steps`` roughly evenly spaced in log t.

    For each of ``n_points`` geometric targets between min(steps) and
    max(steps) the nearest observed step (in log t) is taken; duplicates are
    dropped, so fewer than ``n_points`` indices come back when the early grid is
    sparse. ``steps`` must be positive and strictly increasing.
    """
    t = np.asarray(steps, dtype=float)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("steps must be a non-empty 1-d array")
    if np.any(t <= 0):
        raise ValueError("steps must be > 0 (log t is undefined at t <= 0)")
    if np.any(np.diff(t) <= 0):
        raise ValueError("steps must be strictly increasing")
    if t.size <= n_points:
        return np.arange(t.size)
    lt = np.log(t)
    targets = np.linspace(lt[0], lt[-1], n_points)
    pos = np.searchsorted(lt, targets).clip(1, t.size - 1)
    left = lt[pos - 1]
    right = lt[pos]
    idx = np.where(np.abs(targets - left) <= np.abs(right - targets), pos - 1, pos)
    return np.unique(idx)


# --------------------------------------------------------------------------- slope fits
@dataclass
class SlopeFit(Result):
    """One straight-line fit of log R on log t (eq 17): ``log R = alpha log t + c``.

    ``alpha_se`` is the standard error on which intervals and p-values are based
    (for ``ar1-boot`` the calibrated one) and ``df`` its degrees of freedom (for
    ``ar1-boot`` the effective df of the calibrated reference, small when its
    tails are heavy); intervals are ``alpha +- t_{(1+level)/2, df} * alpha_se``
    (exact at ``level`` for the calibrated methods) and p-values use t_df.
    ``rho`` is the error correlation at one typical gap on ``clock``, ``rho_upper`` its upper confidence bound used
    for the calibration. ``flags`` name conditions in which the coverage suite
    measured undercoverage (empty when none applies).
    """

    alpha: float
    intercept: float
    alpha_se: float
    r2: float
    n_points: int
    t_min: float
    t_max: float
    method: str
    df: float
    rho: Optional[float] = None
    rho_upper: Optional[float] = None
    clock: str = ""
    calibration: float = 1.0  # se multiplier from the calibration (1 when none)
    level: float = 0.95
    flags: list = field(default_factory=list)

    def _estimate_rows(self, level: float) -> list[dict]:
        q = ae.t_quantile(level, self.df) * self.alpha_se
        return [estimate_row("alpha", self.alpha, self.alpha_se, self.alpha - q, self.alpha + q)]

    def pvalue_less(self, threshold: float) -> float:
        """One-sided p-value of H0: slope >= threshold against H1: slope < threshold."""
        return float(stats.t.cdf((self.alpha - threshold) / self.alpha_se, self.df))

    def pvalue_greater(self, threshold: float) -> float:
        """One-sided p-value of H0: slope <= threshold against H1: slope > threshold."""
        return float(stats.t.sf((self.alpha - threshold) / self.alpha_se, self.df))


def _flags(n: int, rho_upper: Optional[float]) -> list[str]:
    out = []
    if rho_upper is not None and rho_upper >= FLAG_RHO_UPPER:
        out.append(f"near unit root (rho upper bound {rho_upper:.3f} >= {FLAG_RHO_UPPER}): "
                   "alpha interval may undercover")
    if n < FLAG_MIN_POINTS:
        out.append(f"few points ({n} < {FLAG_MIN_POINTS}): fewer than the coverage suite checked")
    return out


def slope_batch(x: np.ndarray, records: np.ndarray, Y: np.ndarray, method: str = "ar1-boot",
                level: float = 0.95) -> dict:
    """The eq-17 fit of every row of ``Y`` [R, n] on the shared design ``x`` (log t), vectorised.

    ``records`` are the points' positions in the logged sequence (the ``record``
    clock). Methods ``ar1-boot`` and ``ar1`` only (no randomness: the calibration
    table is a pure function of the design). Returns arrays ``alpha, intercept,
    se_gls, alpha_se, df, rho, rho_upper, calibration`` (rho and its upper bound as
    correlations at the median gap of the chosen clock) and the list ``clock``.
    """
    if method not in ("ar1-boot", "ar1"):
        raise ValueError(f"slope_batch supports 'ar1-boot' and 'ar1', got {method!r}")
    Y = np.atleast_2d(Y)
    R, n = Y.shape
    X = np.column_stack([np.ones(n), x])
    gaps = ae.clock_gaps(x, records)
    fits = {name: ae.fit_car(X, Y, g) for name, g in gaps.items()}
    names = list(fits)
    best = np.stack([fits[c].loglik for c in names]).argmax(0)
    out = {k: np.empty(R) for k in ("alpha", "intercept", "se_gls", "rho", "rho_upper", "calibration", "df")}
    clock = [names[b] for b in best]
    for i, name in enumerate(names):
        m = best == i
        if not m.any():
            continue
        f = fits[name]
        out["alpha"][m], out["intercept"][m] = f.coef[m, 1], f.coef[m, 0]
        out["se_gls"][m], out["rho"][m] = f.se[m, 1], ae.typical(f.rho[m], gaps[name])
        if method == "ar1-boot":
            s_, nu, up = ae.critical_value(x, gaps[name], f.rho[m], level)
            out["calibration"][m], out["df"][m], out["rho_upper"][m] = s_, nu, ae.typical(up, gaps[name])
        else:
            out["calibration"][m], out["df"][m], out["rho_upper"][m] = 1.0, n - 3.0, np.nan
    out["alpha_se"] = out["se_gls"] * out["calibration"]
    out["clock"] = clock
    return out


def _pw_boot(x, y, n_boot, rng, level):
    c, a, se, rho, sig = (float(v[0]) for v in ae.prais_winsten(x, y[None, :]))
    E = ae.ar1_noise(rng, np.array([rho]), np.array([sig]), n_boot, x.size)[0]
    _, ab, seb, _, _ = ae.prais_winsten(x, c + a * x[None, :] + E)
    calib = float(np.quantile(np.abs((ab - a) / seb), level)) / ae.t_quantile(level, x.size - 3)
    return a, c, se * calib, rho, calib


def fit_loglog(log_t: np.ndarray, log_R: np.ndarray, method: str = "ar1-boot", n_boot: int = 199,
               seed: Union[int, np.random.Generator, None] = 0, level: float = 0.95,
               records: Optional[np.ndarray] = None) -> SlopeFit:
    """Fit eq 17, ``log R = alpha log t + c``, with an interval that accounts for correlated errors.

    ``method``: see the module docstring. ``records``: the points' positions in
    the logged sequence (default: positions in ``log_t``). ``n_boot`` and
    ``seed`` matter only for ``"pw-boot"``. ``r2`` is always the OLS r^2 of the
    log-log fit (the paper's r^2).
    """
    from .._validation import check_choice, check_level

    check_choice("method", method, METHODS)
    check_level(level)
    x = np.asarray(log_t, dtype=float)
    y = np.asarray(log_R, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("log_t and log_R must be 1-d arrays of equal length")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("log_t and log_R must be finite (R must be > 0 and t > 0)")
    n = x.size
    if n < 5:
        raise ValueError(f"need at least 5 points for a log-log fit, got {n}")
    if np.ptp(x) == 0:
        raise ValueError("log_t has no spread")
    rec = np.arange(n, dtype=float) if records is None else np.asarray(records, float)
    span = dict(n_points=n, t_min=float(np.exp(x.min())), t_max=float(np.exp(x.max())), method=method,
                level=level)
    import statsmodels.api as sm

    ols = sm.OLS(y, sm.add_constant(x)).fit()
    r2 = float(ols.rsquared) if np.ptp(y) > 0 else 1.0
    if method in ("ols", "hac"):
        if method == "hac":
            maxlags = int(math.floor(4 * (n / 100.0) ** (2.0 / 9.0)))
            ols = sm.OLS(y, sm.add_constant(x)).fit(cov_type="HAC", cov_kwds={"maxlags": maxlags}, use_t=True)
        return SlopeFit(alpha=float(ols.params[1]), intercept=float(ols.params[0]), alpha_se=float(ols.bse[1]),
                        r2=r2, df=n - 2, flags=_flags(n, None), **span)
    if method == "pw-boot":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        a, c, se, rho, calib = _pw_boot(x, y, n_boot, rng, level)
        return SlopeFit(alpha=a, intercept=c, alpha_se=se, r2=r2, df=n - 3, rho=rho, clock="index",
                        calibration=calib, flags=_flags(n, None), **span)
    b = slope_batch(x, rec, y[None, :], method, level)
    rho_up = None if method == "ar1" else float(b["rho_upper"][0])
    return SlopeFit(alpha=float(b["alpha"][0]), intercept=float(b["intercept"][0]),
                    alpha_se=float(b["alpha_se"][0]), r2=r2, df=float(b["df"][0]), rho=float(b["rho"][0]),
                    rho_upper=rho_up,
                    clock=b["clock"][0], calibration=float(b["calibration"][0]), flags=_flags(n, rho_up), **span)
