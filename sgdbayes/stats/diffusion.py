"""Diffusion fits of one run's displacement curve R(t) (paper eq 11, 12, 17).

Model (eq 17)::

    log R(t) = alpha * log t + c,      alpha = d_s / (2 lambda)

so that (eq 12) ``d_walk = 1/alpha = 2 lambda / d_s`` and ``d_s = 2 lambda alpha``.
Eq 11: ``R(t) ~ t^(1/d_walk)``.

Why not plain OLS: residuals of a cumulative quantity such as log R(t) are
strongly autocorrelated. On simulated curves with AR(1) noise (phi up to 0.9)
the OLS 95 % interval for alpha covers the truth in only ~50-75 % of curves and
a Newey-West (HAC) interval in ~65-85 % (see ``tests/test_diffusion.py``).

Default interval method (``method="ar1-boot"``):

1. thin the curve to points roughly evenly spaced in log t (:func:`log_grid`);
2. regression with AR(1) errors by iterated Prais-Winsten feasible GLS, with
   the AR coefficient bias-corrected at every iteration,
   ``rho_bc = rho_hat + (1 + 4 rho_hat)/n`` (the first-order bias of the lag-1
   autocorrelation of residuals around a fitted linear trend);
3. calibration of the GLS t statistic by a parametric bootstrap-t: B curves
   are simulated from the fitted line + AR(1) noise (rho_bc, sigma_hat),
   refitted, and the 95 % quantile of |t*| replaces the Student-t quantile. The
   reported ``se_alpha`` is the *calibrated* standard error
   ``se_gls * q*_{0.95} / t_{0.975, n-3}`` so that every downstream quantity
   (p-values, delta method for d_s) inherits the calibration.

Other methods: ``"ar1"`` (step 2 only, Student-t with n-3 df), ``"hac"``
(OLS + Newey-West, maxlags = floor(4 (n/100)^(2/9)), use_t) and ``"ols"``.
They exist for comparison; the coverage tests show why the default is the
default.

d_s uncertainty (delta method, docs/methods.md#diffusion-fits-eq-17)::

    d_s = 2 lambda alpha,
    se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2

(lambda and alpha are estimated from different data and treated as independent).

Early super-diffusion (App B.3) is handled by a two-segment (hinge) fit in
log-log space, ``log R = c + a1 x + (a2 - a1)(x - x_c)_+`` with ``x = log t``
and crossover ``t_c = exp(x_c)`` chosen by least squares over the observed grid;
its interval comes from a parametric AR(1) bootstrap of the hinge fit. The
late-window slope is then re-fitted (method above) on ``t >= t_c``.

All randomness uses a local ``numpy.random.Generator`` built from ``seed``; no
global state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
from scipy import stats
from scipy.signal import lfilter

__all__ = [
    "SlopeFit",
    "CrossoverFit",
    "DiffusionFit",
    "log_grid",
    "fit_loglog",
    "fit_crossover",
    "fit_diffusion",
    "spectral_dimension",
    "final_llc",
]

METHODS = ("ar1-boot", "ar1", "hac", "ols")


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


# --------------------------------------------------------------------------- core fits
def _pw_batch(x: np.ndarray, Y: np.ndarray, iters: int = 10, bias_correct: bool = True):
    """Iterated Prais-Winsten FGLS of ``Y[b] = c + a x + u``, u ~ AR(1), vectorised over rows.

    Returns (c, a, se_a, rho, sigma, r2_ols) arrays of length B.
    """
    Y = np.atleast_2d(Y)
    B, n = Y.shape
    xm = x.mean()
    xc = x - xm
    sxx = xc @ xc
    a = (Y - Y.mean(1, keepdims=True)) @ xc / sxx
    c = Y.mean(1) - a * xm
    ss_tot = ((Y - Y.mean(1, keepdims=True)) ** 2).sum(1)
    r_ols = Y - c[:, None] - a[:, None] * x
    r2 = 1.0 - (r_ols ** 2).sum(1) / np.where(ss_tot > 0, ss_tot, np.nan)
    rho = np.zeros(B)
    for _ in range(iters):
        r = Y - c[:, None] - a[:, None] * x
        den = (r * r).sum(1)
        rho = np.where(den > 0, (r[:, 1:] * r[:, :-1]).sum(1) / np.where(den > 0, den, 1.0), 0.0)
        if bias_correct:
            rho = rho + (1.0 + 4.0 * rho) / n
        rho = np.clip(rho, -0.99, 0.99)
        s = np.sqrt(1.0 - rho ** 2)
        # transformed regressors: constant column z, slope column w, response v
        z = np.concatenate([s[:, None], np.broadcast_to((1.0 - rho)[:, None], (B, n - 1))], axis=1)
        w = np.concatenate([(s * x[0])[:, None], x[1:][None, :] - rho[:, None] * x[:-1][None, :]], axis=1)
        v = np.concatenate([(s * Y[:, 0])[:, None], Y[:, 1:] - rho[:, None] * Y[:, :-1]], axis=1)
        zz = (z * z).sum(1)
        zw = (z * w).sum(1)
        ww = (w * w).sum(1)
        zv = (z * v).sum(1)
        wv = (w * v).sum(1)
        det = zz * ww - zw ** 2
        c = (ww * zv - zw * wv) / det
        a = (zz * wv - zw * zv) / det
    e = v - c[:, None] * z - a[:, None] * w
    sigma2 = (e * e).sum(1) / (n - 2)
    se_a = np.sqrt(sigma2 * zz / det)
    return c, a, se_a, rho, np.sqrt(sigma2), r2


def _ar1_noise(rng: np.random.Generator, B: int, n: int, rho: float, sigma: float) -> np.ndarray:
    z = rng.normal(size=(B, n)) * sigma
    z[:, 0] /= math.sqrt(max(1.0 - rho ** 2, 1e-6))
    return lfilter([1.0], [1.0, -rho], z, axis=1)


@dataclass
class SlopeFit:
    """One straight-line fit of log R on log t (eq 17): ``log R = alpha log t + c``.

    ``se_alpha`` is the standard error on which intervals and p-values are based
    (for ``ar1-boot`` the bootstrap-calibrated one); intervals are
    ``alpha +- q * se_alpha`` with q the Student-t quantile on ``df`` degrees of
    freedom.
    """

    alpha: float
    intercept: float
    se_alpha: float
    r2: float
    n_points: int
    t_min: float
    t_max: float
    method: str
    df: int
    rho: Optional[float] = None
    calibration: float = 1.0  # se multiplier from the bootstrap-t (1 when none)
    level: float = 0.95

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        """(lo, hi) interval for the slope alpha at level 1 - ``alpha``."""
        q = stats.t.ppf(1 - alpha / 2, self.df)
        return (self.alpha - q * self.se_alpha, self.alpha + q * self.se_alpha)

    def p_less(self, threshold: float) -> float:
        """One-sided p-value of H0: slope >= threshold against H1: slope < threshold."""
        return float(stats.t.cdf((self.alpha - threshold) / self.se_alpha, self.df))

    def p_greater(self, threshold: float) -> float:
        """One-sided p-value of H0: slope <= threshold against H1: slope > threshold."""
        return float(stats.t.sf((self.alpha - threshold) / self.se_alpha, self.df))


def fit_loglog(
    log_t: np.ndarray,
    log_R: np.ndarray,
    method: str = "ar1-boot",
    n_boot: int = 199,
    seed: Union[int, np.random.Generator, None] = 0,
) -> SlopeFit:
    """Fit eq 17, ``log R = alpha log t + c``, with an interval that accounts for AR errors.

    ``method`` is one of ``"ar1-boot"`` (default; Prais-Winsten FGLS with a
    bias-corrected AR(1) coefficient, bootstrap-t calibrated), ``"ar1"``,
    ``"hac"`` or ``"ols"`` -- see the module docstring. ``r2`` is always the
    OLS r^2 of the log-log fit (the paper's r^2).
    """
    x = np.asarray(log_t, dtype=float)
    y = np.asarray(log_R, dtype=float)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("log_t and log_R must be 1-d arrays of equal length")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("log_t and log_R must be finite (R must be > 0 and t > 0)")
    n = x.size
    if n < 5:
        raise ValueError(f"need at least 5 points for a log-log fit, got {n}")
    if np.ptp(x) == 0:
        raise ValueError("log_t has no spread")
    t_min, t_max = float(np.exp(x.min())), float(np.exp(x.max()))
    if method in ("ols", "hac"):
        import statsmodels.api as sm

        X = sm.add_constant(x)
        if method == "ols":
            res = sm.OLS(y, X).fit()
        else:
            maxlags = int(math.floor(4 * (n / 100.0) ** (2.0 / 9.0)))
            res = sm.OLS(y, X).fit(cov_type="HAC", cov_kwds={"maxlags": maxlags}, use_t=True)
        return SlopeFit(alpha=float(res.params[1]), intercept=float(res.params[0]),
                        se_alpha=float(res.bse[1]), r2=float(res.rsquared), n_points=n,
                        t_min=t_min, t_max=t_max, method=method, df=int(n - 2))
    c, a, se, rho, sig, r2 = _pw_batch(x, y[None, :])
    c, a, se, rho, sig, r2 = (float(v[0]) for v in (c, a, se, rho, sig, r2))
    df = n - 3  # two regression parameters + the AR coefficient
    calib = 1.0
    if method == "ar1-boot":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        E = _ar1_noise(rng, n_boot, n, rho, sig)
        Yb = c + a * x[None, :] + E
        _, ab, seb, _, _, _ = _pw_batch(x, Yb)
        tstar = np.abs((ab - a) / seb)
        q_boot = float(np.quantile(tstar, 0.95))
        calib = q_boot / float(stats.t.ppf(0.975, df))
    return SlopeFit(alpha=a, intercept=c, se_alpha=se * calib, r2=r2, n_points=n, t_min=t_min,
                    t_max=t_max, method=method, df=df, rho=rho, calibration=calib)


# --------------------------------------------------------------------------- crossover
def _hinge_sse(x: np.ndarray, Y: np.ndarray, cand: np.ndarray):
    """SSE of the hinge fit for each candidate knot (rows of Y x candidates) + coefficients."""
    B = Y.shape[0]
    sse = np.empty((B, cand.size))
    coefs = np.empty((B, cand.size, 3))
    for j, xc in enumerate(cand):
        X = np.column_stack([np.ones_like(x), x, np.maximum(x - xc, 0.0)])
        P = np.linalg.pinv(X)  # 3 x n
        beta = Y @ P.T  # B x 3
        r = Y - beta @ X.T
        sse[:, j] = (r * r).sum(1)
        coefs[:, j] = beta
    return sse, coefs


@dataclass
class CrossoverFit:
    """Two-segment (hinge) fit in log-log space, App B.3.

    ``log R = c + a_early x + (a_late - a_early) (x - log t_c)_+`` with x = log t.
    ``t_c`` is the least-squares knot over the observed grid; ``t_c_ci`` and
    ``delta_ci`` (for a_late - a_early) are percentile intervals from a
    parametric bootstrap with AR(1) residuals. ``significant`` is True when the
    interval for a_late - a_early excludes 0.
    """

    t_c: float
    t_c_ci: tuple[float, float]
    alpha_early: float
    alpha_late: float
    delta_ci: tuple[float, float]
    rho: float
    n_boot: int

    @property
    def significant(self) -> bool:
        lo, hi = self.delta_ci
        return bool(lo > 0 or hi < 0)


def fit_crossover(
    log_t: np.ndarray,
    log_R: np.ndarray,
    min_segment: int = 8,
    n_boot: int = 199,
    level: float = 0.95,
    seed: Union[int, np.random.Generator, None] = 0,
) -> CrossoverFit:
    """Find the crossover time t_c between early and late diffusion (App B.3).

    Knots are searched on a grid 4x finer than the observed log t values,
    leaving at least ``min_segment`` points on each side. Interval for t_c: parametric bootstrap
    (fitted hinge + AR(1) noise with the bias-corrected lag-1 autocorrelation of
    the hinge residuals), percentile interval at ``level``.
    """
    x = np.asarray(log_t, dtype=float)
    y = np.asarray(log_R, dtype=float)
    n = x.size
    if n < 2 * min_segment + 1:
        raise ValueError(f"need at least {2 * min_segment + 1} points for a crossover fit, got {n}")
    # knots: the interior observed grid values, refined 4x between neighbours
    # (a knot between two grid points is identifiable for a continuous hinge)
    grid = x[min_segment - 1: n - min_segment + 1]
    cand = np.unique(np.concatenate([np.linspace(a, b, 4, endpoint=False)
                                     for a, b in zip(grid[:-1], grid[1:])] + [grid[-1:]]))
    cand = cand[(cand >= x[min_segment - 1]) & (cand <= x[n - min_segment])]
    sse, coefs = _hinge_sse(x, y[None, :], cand)
    j = int(np.argmin(sse[0]))
    beta = coefs[0, j]
    xc = cand[j]
    fitted = beta[0] + beta[1] * x + beta[2] * np.maximum(x - xc, 0)
    r = y - fitted
    rho = float(np.sum(r[1:] * r[:-1]) / np.sum(r * r)) if np.sum(r * r) > 0 else 0.0
    rho = float(np.clip(rho + (1 + 4 * rho) / n, -0.99, 0.99))
    # innovation sd of the AR(1) implied by the residual variance
    sig = float(np.sqrt(np.sum(r * r) / (n - 4) * (1 - rho ** 2)))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    Yb = fitted[None, :] + _ar1_noise(rng, n_boot, n, rho, sig)
    sse_b, coefs_b = _hinge_sse(x, Yb, cand)
    jb = np.argmin(sse_b, axis=1)
    xcb = cand[jb]
    deltab = coefs_b[np.arange(n_boot), jb, 2]
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    tc_ci = (float(np.exp(np.quantile(xcb, lo_q))), float(np.exp(np.quantile(xcb, hi_q))))
    d_ci = (float(np.quantile(deltab, lo_q)), float(np.quantile(deltab, hi_q)))
    return CrossoverFit(t_c=float(np.exp(xc)), t_c_ci=tc_ci, alpha_early=float(beta[1]),
                        alpha_late=float(beta[1] + beta[2]), delta_ci=d_ci, rho=rho, n_boot=n_boot)


# --------------------------------------------------------------------------- d_s
def spectral_dimension(alpha: float, se_alpha: float, llc: float, llc_se: float = 0.0,
                       level: float = 0.95) -> tuple[float, float, tuple[float, float]]:
    """d_s = 2 lambda alpha (eq 17) with a delta-method interval.

    ``se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2``; the
    interval is ``d_s +- z se(d_s)`` (normal quantile). Returns (d_s, se, (lo, hi)).
    """
    for name, v in (("alpha", alpha), ("se_alpha", se_alpha), ("llc", llc), ("llc_se", llc_se)):
        if v is None or not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    d_s = 2.0 * llc * alpha
    se = math.sqrt((2 * alpha) ** 2 * llc_se ** 2 + (2 * llc) ** 2 * se_alpha ** 2)
    z = stats.norm.ppf((1 + level) / 2)
    return d_s, se, (d_s - z * se, d_s + z * se)


def final_llc(llc: Sequence[float], n_last: int = 10) -> tuple[float, float, int]:
    """Final lambda of a run (App G.1): mean of the last ``n_last`` non-missing estimates.

    Returns (mean, se, n_used) with ``se = std(ddof=1) / sqrt(n_used)``. The
    estimates along training are autocorrelated, so this se is optimistic
    (it treats them as independent); ``se`` is 0.0 and flagged by
    ``n_used == 1`` when a single estimate exists.
    """
    v = np.asarray(llc, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no non-missing LLC estimates")
    v = v[-n_last:]
    se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se, int(v.size)


# --------------------------------------------------------------------------- run-level
@dataclass
class DiffusionFit:
    """Results of :func:`fit_diffusion` for one run (statsmodels-style).

    Whole-range fit of eq 17 (``alpha``, ``intercept``, ``r2``, ``se_alpha``),
    ``d_walk = 1/alpha`` (eq 12), and when an LLC is given
    ``d_s = 2 lambda alpha`` with a delta-method interval. ``late`` is the
    late-window fit (after the crossover ``crossover.t_c``, or over the last
    fraction of log t), ``None`` when it could not be fitted (see ``notes``).
    """

    whole: SlopeFit
    late: Optional[SlopeFit]
    crossover: Optional[CrossoverFit]
    llc: Optional[float] = None
    llc_se: Optional[float] = None
    n_dropped_zero: int = 0
    late_window: str = "crossover"
    notes: list[str] = field(default_factory=list)
    level: float = 0.95

    # --- whole-range shortcuts
    @property
    def alpha(self) -> float:
        return self.whole.alpha

    @property
    def intercept(self) -> float:
        return self.whole.intercept

    @property
    def se_alpha(self) -> float:
        return self.whole.se_alpha

    @property
    def r2(self) -> float:
        return self.whole.r2

    @property
    def n_points(self) -> int:
        return self.whole.n_points

    @property
    def d_walk(self) -> float:
        """d_walk = 1/alpha (eq 12); inf when alpha == 0."""
        return 1.0 / self.alpha if self.alpha != 0 else math.inf

    def conf_int(self, alpha: float = 0.05) -> "dict[str, tuple[float, float]]":
        """Intervals for alpha (whole, late) and d_s (whole, late) at level 1 - alpha."""
        out = {"alpha": self.whole.conf_int(alpha)}
        if self.late is not None:
            out["alpha_late"] = self.late.conf_int(alpha)
        if self.llc is not None:
            out["d_s"] = self._ds(self.whole, 1 - alpha)[2]
            if self.late is not None:
                out["d_s_late"] = self._ds(self.late, 1 - alpha)[2]
        return out

    def _ds(self, fit: SlopeFit, level: float):
        return spectral_dimension(fit.alpha, fit.se_alpha, self.llc, self.llc_se or 0.0, level)

    @property
    def d_s(self) -> Optional[float]:
        """d_s = 2 lambda alpha (eq 17), whole-range fit; None without an LLC."""
        return None if self.llc is None else self._ds(self.whole, self.level)[0]

    @property
    def d_s_se(self) -> Optional[float]:
        return None if self.llc is None else self._ds(self.whole, self.level)[1]

    def p_subdiffusive(self, window: str = "whole") -> float:
        """One-sided p-value for H1: alpha < 1/2 (H0: alpha >= 1/2), eq 11 with d_walk > 2."""
        fit = self.whole if window == "whole" else self.late
        if fit is None:
            raise ValueError("no late-window fit for this run")
        return fit.p_less(0.5)

    def to_row(self) -> dict:
        """Flat dict of the run-level results (the columns of ``runs.csv``)."""
        lo, hi = self.whole.conf_int(1 - self.level)
        row = {
            "n_points": self.whole.n_points, "t_min": self.whole.t_min, "t_max": self.whole.t_max,
            "alpha": self.alpha, "alpha_se": self.se_alpha, "alpha_lo": lo, "alpha_hi": hi,
            "alpha_df": self.whole.df,
            "intercept": self.intercept, "r2": self.r2, "ar1_rho": self.whole.rho,
            "method": self.whole.method, "d_walk": self.d_walk,
            "p_subdiffusive": self.whole.p_less(0.5),
            "llc": self.llc, "llc_se": self.llc_se,
            "d_s": None, "d_s_se": None, "d_s_lo": None, "d_s_hi": None,
            "n_dropped_zero": self.n_dropped_zero,
        }
        if self.llc is not None:
            d, se, (dl, dh) = self._ds(self.whole, self.level)
            row.update(d_s=d, d_s_se=se, d_s_lo=dl, d_s_hi=dh)
        cx = self.crossover
        row.update(t_c=cx.t_c if cx else None, t_c_lo=cx.t_c_ci[0] if cx else None,
                   t_c_hi=cx.t_c_ci[1] if cx else None,
                   alpha_early=cx.alpha_early if cx else None,
                   crossover_significant=cx.significant if cx else None)
        lt = self.late
        row["late_window"] = self.late_window
        if lt is not None:
            llo, lhi = lt.conf_int(1 - self.level)
            row.update(late_t_start=lt.t_min, late_n_points=lt.n_points, late_alpha=lt.alpha,
                       late_alpha_se=lt.se_alpha, late_alpha_df=lt.df, late_alpha_lo=llo, late_alpha_hi=lhi,
                       late_r2=lt.r2, late_d_walk=1 / lt.alpha if lt.alpha != 0 else math.inf,
                       late_p_subdiffusive=lt.p_less(0.5))
            if self.llc is not None:
                d, se, (dl, dh) = self._ds(lt, self.level)
                row.update(late_d_s=d, late_d_s_se=se, late_d_s_lo=dl, late_d_s_hi=dh)
            else:
                row.update(late_d_s=None, late_d_s_se=None, late_d_s_lo=None, late_d_s_hi=None)
        else:
            for k in ("late_t_start", "late_n_points", "late_alpha", "late_alpha_se", "late_alpha_df", "late_alpha_lo",
                      "late_alpha_hi", "late_r2", "late_d_walk", "late_p_subdiffusive", "late_d_s",
                      "late_d_s_se", "late_d_s_lo", "late_d_s_hi"):
                row[k] = None
        row["notes"] = "; ".join(self.notes)
        return row

    def summary(self) -> str:
        """Plain-text summary table (statsmodels style)."""
        pct = int(round(self.level * 100))
        lines = ["Diffusion fit: log R(t) = alpha log t + c   (eq 17; d_walk = 1/alpha, eq 12;"
                 " d_s = 2 lambda alpha)",
                 f"method: {self.whole.method}   points: {self.whole.n_points} (evenly spaced in log t)"
                 f"   t in [{self.whole.t_min:.4g}, {self.whole.t_max:.4g}]",
                 "=" * 78,
                 f"{'window':<8}{'param':<10}{'estimate':>12}{'se':>12}{f'[{pct}% lo':>12}{'hi]':>12}"
                 f"{'r2':>8}{'AR rho':>8}", "-" * 78]

        def add(win, fit):
            lo, hi = fit.conf_int(1 - self.level)
            rho = "" if fit.rho is None else f"{fit.rho:.3f}"
            lines.append(f"{win:<8}{'alpha':<10}{fit.alpha:>12.4f}{fit.se_alpha:>12.4f}{lo:>12.4f}"
                         f"{hi:>12.4f}{fit.r2:>8.3f}{rho:>8}")
            if self.llc is not None:
                d, se, (dl, dh) = self._ds(fit, self.level)
                lines.append(f"{'':<8}{'d_s':<10}{d:>12.4f}{se:>12.4f}{dl:>12.4f}{dh:>12.4f}")
            lines.append(f"{'':<8}{'d_walk':<10}{(1 / fit.alpha if fit.alpha else math.inf):>12.4f}")
            lines.append(f"{'':<8}{'p(a<1/2)':<10}{fit.p_less(0.5):>12.4g}")

        add("whole", self.whole)
        if self.late is not None:
            add(f"t>={self.late.t_min:.3g}", self.late)
        lines.append("-" * 78)
        if self.llc is not None:
            lines.append(f"lambda (LLC) = {self.llc:.4g} +- {self.llc_se or 0:.3g} (se)")
            if self.llc <= 0:
                lines.append("WARNING: lambda <= 0; d_s <= lambda is then NOT equivalent to alpha <= 1/2")
        if self.crossover is not None:
            cx = self.crossover
            lines.append(f"crossover t_c = {cx.t_c:.4g} [{cx.t_c_ci[0]:.4g}, {cx.t_c_ci[1]:.4g}]"
                         f"  alpha early {cx.alpha_early:.3f} -> late {cx.alpha_late:.3f}"
                         f"  (change {'significant' if cx.significant else 'not significant'})")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


def fit_diffusion(
    steps: Sequence[float],
    displacement: Sequence[float],
    llc: Optional[float] = None,
    llc_se: Optional[float] = None,
    *,
    n_grid: int = 64,
    method: str = "ar1-boot",
    late_window: Union[str, float, None] = "crossover",
    min_late_points: int = 10,
    min_segment: int = 8,
    n_boot: int = 199,
    level: float = 0.95,
    seed: Union[int, None] = 0,
) -> DiffusionFit:
    """Fit a run's displacement curve: eq 17 ``log R = alpha log t + c``, ``alpha = d_s/(2 lambda)``.

    Parameters
    ----------
    steps, displacement
        t >= 1 (> 0) optimizer steps and R(t) = ||w_t - w_0|| >= 0. Points with
        R = 0 (log undefined) are dropped and counted (``n_dropped_zero``).
    llc, llc_se
        Final lambda and its standard error; with them ``d_s = 2 lambda alpha``
        and its delta-method interval
        ``se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2``.
    n_grid
        Number of points, evenly spaced in log t, the curve is thinned to.
    method
        Interval method for alpha: ``"ar1-boot"`` (default), ``"ar1"``, ``"hac"``, ``"ols"``.
    late_window
        ``"crossover"``: late fit on t >= t_c from a two-segment fit;
        a float f in (0, 1): late fit on the last fraction f of the log-t range;
        ``None``: no late fit.
    """
    t = np.asarray(steps, dtype=float)
    R = np.asarray(displacement, dtype=float)
    if t.shape != R.shape or t.ndim != 1:
        raise ValueError("steps and displacement must be 1-d arrays of equal length")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(R))):
        raise ValueError("steps and displacement must be finite")
    if np.any(t <= 0):
        raise ValueError("steps must be > 0")
    if np.any(R < 0):
        raise ValueError("displacement must be >= 0")
    order = np.argsort(t, kind="stable")
    t, R = t[order], R[order]
    if np.any(np.diff(t) == 0):
        raise ValueError("duplicate steps")
    keep = R > 0
    n_zero = int((~keep).sum())
    notes: list[str] = []
    if n_zero:
        notes.append(f"{n_zero} point(s) with R = 0 dropped (log undefined)")
    t, R = t[keep], R[keep]
    if llc is not None and not np.isfinite(llc):
        raise ValueError(f"llc must be finite, got {llc}")
    if llc_se is not None and not np.isfinite(llc_se):
        raise ValueError(f"llc_se must be finite, got {llc_se}")
    idx = log_grid(t, n_grid)
    x, y = np.log(t[idx]), np.log(R[idx])
    rng = np.random.default_rng(seed)
    whole = fit_loglog(x, y, method=method, n_boot=n_boot, seed=rng)
    crossover = None
    late = None
    lw_label = "none"
    if late_window == "crossover":
        lw_label = "crossover"
        try:
            crossover = fit_crossover(x, y, min_segment=min_segment, n_boot=n_boot, level=level, seed=rng)
            mask = x >= np.log(crossover.t_c) - 1e-12
        except ValueError as exc:
            notes.append(f"no crossover fit: {exc}")
            mask = None
    elif late_window is not None:
        f = float(late_window)
        if not 0 < f < 1:
            raise ValueError("late_window must be 'crossover', a fraction in (0, 1) or None")
        lw_label = f"last {f:g} of log t"
        mask = x >= x.max() - f * (x.max() - x.min()) - 1e-12
    else:
        mask = None
    if mask is not None:
        if mask.sum() >= min_late_points:
            late = fit_loglog(x[mask], y[mask], method=method, n_boot=n_boot, seed=rng)
        else:
            notes.append(f"late window has {int(mask.sum())} < {min_late_points} points; no late fit")
    if llc is not None and llc <= 0:
        notes.append("lambda <= 0: d_s = 2 lambda alpha has the opposite sign to alpha")
    return DiffusionFit(whole=whole, late=late, crossover=crossover,
                        llc=None if llc is None else float(llc),
                        llc_se=None if llc is None else float(llc_se or 0.0),
                        n_dropped_zero=n_zero, late_window=lw_label, notes=notes, level=level)
