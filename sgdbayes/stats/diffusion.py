"""Diffusion fits of one run's displacement curve R(t) (paper eq 11, 12, 17).

Model (eq 17)::

    log R(t) = alpha * log t + c,      alpha = d_s / (2 lambda)

so that (eq 12) ``d_walk = 1/alpha = 2 lambda / d_s`` and ``d_s = 2 lambda alpha``.
Eq 11: ``R(t) ~ t^(1/d_walk)``.

How the interval for alpha is built (``method="ar1-boot"``, the default; the
reasoning and the measured coverage are in docs/intervals.md):

1. the curve is thinned to points roughly evenly spaced in log t (:func:`log_grid`);
2. regression with CAR(1) errors (:mod:`sgdbayes.stats.ar_errors`): the error
   correlation decays with the gap on a clock, ``log t`` or the logging
   ``record`` index, whichever has the larger restricted likelihood; rho by
   REML, (c, alpha) by GLS;
3. the GLS t statistic is referred to a simulated table for the curve's own
   design, evaluated at an upper confidence bound for rho (its distribution is
   heavy-tailed near rho = 1). ``alpha_se`` is the *calibrated* standard error
   ``se_gls * q / t_{(1+level)/2, n-3}``, so that intervals, p-values and the
   delta method for d_s inherit the calibration; ``flags`` name the conditions
   in which the suite measured undercoverage.

Other methods: ``"ar1"`` (steps 1-2, Student-t with n-3 df), ``"pw-boot"``
(the previous default: Prais-Winsten AR(1) in the point index, parametric
bootstrap-t at the estimated rho), ``"hac"`` (OLS + Newey-West, maxlags =
floor(4 (n/100)^(2/9)), use_t) and ``"ols"``. They exist for comparison.

d_s uncertainty (delta method, docs/methods.md#diffusion-fits-eq-17)::

    d_s = 2 lambda alpha,
    se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2

(lambda and alpha estimated from different data, treated as independent), with a
Student-t reference whose degrees of freedom combine those of se(alpha) and
se(lambda) by Welch-Satterthwaite (a mean of 10 LLC estimates has 9).

Early super-diffusion (App B.3): :mod:`sgdbayes.stats.crossover` finds the
crossover t_c; the late-window slope is re-fitted (method above) on t >= t_c.

A run whose displacement is constant (or has fewer than 5 positive points) has
no diffusion exponent: :func:`fit_diffusion` raises :class:`UnfitRun`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
from scipy import stats

from . import ar_errors as ae
from .crossover import CrossoverFit, fit_crossover
from .results import Result, estimate_row
from .slope import METHODS, SlopeFit, fit_loglog, log_grid, slope_batch

__all__ = ["UnfitRun", "SlopeFit", "CrossoverFit", "DiffusionFit", "log_grid", "fit_loglog", "slope_batch",
           "fit_crossover", "fit_diffusion", "spectral_dimension", "welch_df", "final_llc", "METHODS"]


class UnfitRun(ValueError):
    """A run that has no diffusion exponent; the message gives the reason."""


# --------------------------------------------------------------------------- d_s
def welch_df(v1: float, df1: Optional[float], v2: float, df2: Optional[float]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of two variance components (None = known: inf)."""
    terms = [v * v / d for v, d in ((v1, df1), (v2, df2)) if d is not None and np.isfinite(d) and v > 0]
    tot = v1 + v2
    return math.inf if not terms or tot <= 0 else tot * tot / sum(terms)


def spectral_dimension(alpha: float, alpha_se: float, llc: float, llc_se: float = 0.0, level: float = 0.95,
                       *, alpha_df: Optional[float] = None, llc_df: Optional[float] = None
                       ) -> tuple[float, float, tuple[float, float]]:
    """d_s = 2 lambda alpha (eq 17) with a delta-method interval.

    ``se(d_s)^2 = (2 alpha)^2 se(lambda)^2 + (2 lambda)^2 se(alpha)^2``; the
    interval is ``d_s +- q se(d_s)`` with q the Student-t quantile on the
    Welch-Satterthwaite df of the two components (``alpha_df``, ``llc_df``; None
    means known: the normal quantile when both are None). Returns (d_s, se, (lo, hi)).
    """
    from .._validation import check_float, check_level

    check_level(level)
    for name, v in (("alpha", alpha), ("alpha_se", alpha_se), ("llc", llc), ("llc_se", llc_se)):
        if v is None or not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    check_float("alpha_se", alpha_se, 0.0)
    check_float("llc_se", llc_se, 0.0)
    d_s = 2.0 * llc * alpha
    va, vl = (2 * llc * alpha_se) ** 2, (2 * alpha * llc_se) ** 2
    se = math.sqrt(va + vl)
    df = welch_df(va, alpha_df, vl, llc_df)
    q = stats.norm.ppf((1 + level) / 2) if math.isinf(df) else ae.t_quantile(level, df)
    return d_s, se, (d_s - q * se, d_s + q * se)


def final_llc(llc: Sequence[float], n_last: int = 10) -> tuple[float, float, int]:
    """Final lambda of a run (App G.1): mean of the last ``n_last`` non-missing estimates.

    Returns (mean, se, n_used) with ``se = std(ddof=1) / sqrt(n_used)`` (pass
    ``llc_df = n_used - 1`` to :func:`fit_diffusion`). The estimates along
    training are autocorrelated, so this se is optimistic (it treats them as
    independent); ``se`` is 0.0 and flagged by ``n_used == 1`` when a single
    estimate exists.
    """
    v = np.asarray(llc, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no non-missing LLC estimates")
    v = v[-n_last:]
    se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se, int(v.size)


# --------------------------------------------------------------------------- run-level
_LATE_KEYS = ("late_t_start", "late_n_points", "late_alpha", "late_alpha_se", "late_alpha_df", "late_alpha_lo",
              "late_alpha_hi", "late_r2", "late_d_walk", "late_p_subdiffusive", "late_d_s", "late_d_s_se",
              "late_d_s_lo", "late_d_s_hi")


@dataclass
class DiffusionFit(Result):
    """Results of :func:`fit_diffusion` for one run.

    Whole-range fit of eq 17 (``whole``; shortcuts ``alpha``, ``alpha_se``,
    ``intercept``, ``r2``), ``d_walk = 1/alpha`` (eq 12), and when an LLC is given
    ``d_s = 2 lambda alpha`` with a delta-method interval. ``late`` is the
    late-window fit (after the crossover ``crossover.t_c``, or over the last
    fraction of log t), ``None`` when it could not be fitted (see ``notes``).
    Intervals: ``conf_int(level)`` / ``estimates(level)`` (rows alpha, d_s,
    alpha_late, d_s_late, t_c as available; the ``pvalue`` of the alpha rows is the
    one-sided p-value of H0: alpha >= 1/2, eq 11); ``flags`` lists the conditions
    in which the coverage suite measured undercoverage (docs/intervals.md).
    """

    whole: SlopeFit
    late: Optional[SlopeFit]
    crossover: Optional[CrossoverFit]
    llc: Optional[float] = None
    llc_se: Optional[float] = None
    llc_df: Optional[float] = None
    n_dropped_zero: int = 0
    late_window: str = "crossover"
    notes: list = field(default_factory=list)
    level: float = 0.95

    @property
    def alpha(self) -> float:
        return self.whole.alpha

    @property
    def alpha_se(self) -> float:
        return self.whole.alpha_se

    @property
    def intercept(self) -> float:
        return self.whole.intercept

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

    @property
    def flags(self) -> list[str]:
        out = [f"whole: {f}" for f in self.whole.flags]
        return out + ([f"late: {f}" for f in self.late.flags] if self.late is not None else [])

    def _ds(self, fit: SlopeFit, level: float):
        return spectral_dimension(fit.alpha, fit.alpha_se, self.llc, self.llc_se or 0.0, level,
                                  alpha_df=fit.df, llc_df=self.llc_df)

    @property
    def d_s(self) -> Optional[float]:
        """d_s = 2 lambda alpha (eq 17), whole-range fit; None without an LLC."""
        return None if self.llc is None else self._ds(self.whole, self.level)[0]

    @property
    def d_s_se(self) -> Optional[float]:
        return None if self.llc is None else self._ds(self.whole, self.level)[1]

    def _estimate_rows(self, level: float) -> list[dict]:
        rows = []
        for suffix, fit in (("", self.whole), ("_late", self.late)):
            if fit is None:
                continue
            r = fit.estimates(level).iloc[0]
            rows.append(estimate_row("alpha" + suffix, fit.alpha, fit.alpha_se, r["ci_low"], r["ci_high"],
                                     fit.pvalue_less(0.5)))
            if self.llc is not None:
                d, se, (lo, hi) = self._ds(fit, level)
                rows.append(estimate_row("d_s" + suffix, d, se, lo, hi))
        if self.crossover is not None:
            r = self.crossover.estimates(level).loc["t_c"]
            rows.append(estimate_row("t_c", r["estimate"], None, r["ci_low"], r["ci_high"]))
        return rows

    def pvalue_subdiffusive(self, window: str = "whole") -> float:
        """One-sided p-value for H1: alpha < 1/2 (H0: alpha >= 1/2), eq 11 with d_walk > 2."""
        fit = self.whole if window == "whole" else self.late
        if fit is None:
            raise ValueError("no late-window fit for this run")
        return fit.pvalue_less(0.5)

    def to_row(self) -> dict:
        """Flat dict of the run-level results (the columns of ``runs.csv``)."""
        est = self.estimates(self.level)
        w = est.loc["alpha"]
        row = {
            "n_points": self.whole.n_points, "t_min": self.whole.t_min, "t_max": self.whole.t_max,
            "alpha": self.alpha, "alpha_se": self.alpha_se, "alpha_lo": w["ci_low"], "alpha_hi": w["ci_high"],
            "alpha_df": self.whole.df, "intercept": self.intercept, "r2": self.r2, "ar1_rho": self.whole.rho,
            "method": self.whole.method, "d_walk": self.d_walk, "p_subdiffusive": self.whole.pvalue_less(0.5),
            "llc": self.llc, "llc_se": self.llc_se, "d_s": None, "d_s_se": None, "d_s_lo": None, "d_s_hi": None,
            "n_dropped_zero": self.n_dropped_zero,
        }
        if self.llc is not None:
            d = est.loc["d_s"]
            row.update(d_s=d["estimate"], d_s_se=d["se"], d_s_lo=d["ci_low"], d_s_hi=d["ci_high"])
        cx = self.crossover
        tc = est.loc["t_c"] if cx is not None else None
        row.update(t_c=cx.t_c if cx else None, t_c_lo=tc["ci_low"] if cx else None,
                   t_c_hi=tc["ci_high"] if cx else None, alpha_early=cx.alpha_early if cx else None,
                   crossover_significant=cx.significant if cx else None)
        row["late_window"] = self.late_window
        row.update(dict.fromkeys(_LATE_KEYS))
        lt = self.late
        if lt is not None:
            la = est.loc["alpha_late"]
            row.update(late_t_start=lt.t_min, late_n_points=lt.n_points, late_alpha=lt.alpha,
                       late_alpha_se=lt.alpha_se, late_alpha_df=lt.df, late_alpha_lo=la["ci_low"],
                       late_alpha_hi=la["ci_high"], late_r2=lt.r2,
                       late_d_walk=1 / lt.alpha if lt.alpha != 0 else math.inf,
                       late_p_subdiffusive=lt.pvalue_less(0.5))
            if self.llc is not None:
                d = est.loc["d_s_late"]
                row.update(late_d_s=d["estimate"], late_d_s_se=d["se"], late_d_s_lo=d["ci_low"],
                           late_d_s_hi=d["ci_high"])
        row["notes"] = "; ".join(self.notes)
        row["interval_flags"] = "; ".join(self.flags)
        return row

    def summary(self) -> str:
        """Plain-text summary table."""
        pct = f"{100 * self.level:g}%"
        lines = ["Diffusion fit: log R(t) = alpha log t + c   (eq 17; d_walk = 1/alpha, eq 12;"
                 " d_s = 2 lambda alpha)",
                 f"method: {self.whole.method}   points: {self.whole.n_points} (evenly spaced in log t)"
                 f"   t in [{self.whole.t_min:.4g}, {self.whole.t_max:.4g}]",
                 "=" * 78,
                 f"{'window':<8}{'param':<10}{'estimate':>12}{'se':>12}{f'[{pct} lo':>12}{'hi]':>12}"
                 f"{'r2':>8}{'AR rho':>8}", "-" * 78]
        est = self.estimates(self.level)
        for win, suffix, fit in (("whole", "", self.whole), ("late", "_late", self.late)):
            if fit is None:
                continue
            win = win if not suffix else f"t>={fit.t_min:.3g}"
            a = est.loc["alpha" + suffix]
            rho = "" if fit.rho is None else f"{fit.rho:.3f}"
            lines.append(f"{win:<8}{'alpha':<10}{a['estimate']:>12.4f}{a['se']:>12.4f}{a['ci_low']:>12.4f}"
                         f"{a['ci_high']:>12.4f}{fit.r2:>8.3f}{rho:>8}")
            if self.llc is not None:
                d = est.loc["d_s" + suffix]
                lines.append(f"{'':<8}{'d_s':<10}{d['estimate']:>12.4f}{d['se']:>12.4f}{d['ci_low']:>12.4f}"
                             f"{d['ci_high']:>12.4f}")
            lines.append(f"{'':<8}{'d_walk':<10}{(1 / fit.alpha if fit.alpha else math.inf):>12.4f}")
            lines.append(f"{'':<8}{'p-value (H0: alpha >= 1/2)':<10} {fit.pvalue_less(0.5):.4g}")
        lines.append("-" * 78)
        if self.llc is not None:
            lines.append(f"lambda (LLC) = {self.llc:.4g} +- {self.llc_se or 0:.3g} (se)")
            if self.llc <= 0:
                lines.append("WARNING: lambda <= 0; d_s <= lambda is then NOT equivalent to alpha <= 1/2")
        if self.crossover is not None:
            cx = self.crossover
            tc = est.loc["t_c"]
            lines.append(f"crossover t_c = {cx.t_c:.4g} [{tc['ci_low']:.4g}, {tc['ci_high']:.4g}]"
                         f"  alpha early {cx.alpha_early:.3f} -> late {cx.alpha_late:.3f}"
                         f"  (change {'significant' if cx.significant else 'not significant'})")
        lines += [f"note: {note}" for note in self.notes] + [f"flag: {f}" for f in self.flags]
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


def _clean_curve(steps, displacement) -> tuple[np.ndarray, np.ndarray, int]:
    """Sorted (t, R) with R > 0, and the number of R = 0 points dropped; UnfitRun when no exponent exists."""
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
    if keep.sum() == 0:
        raise UnfitRun("displacement is 0 at every step: the weights never moved, so there is no diffusion exponent")
    t, R = t[keep], R[keep]
    lr = np.log(R)
    if np.ptp(lr) <= 1e-12 * max(1.0, float(np.abs(lr).max())):
        raise UnfitRun(f"displacement is constant (R = {R[0]:.6g} at every step with R > 0): "
                       "there is no diffusion exponent")
    if t.size < 5:
        raise UnfitRun(f"only {t.size} step(s) with displacement > 0; a log-log fit needs at least 5")
    return t, R, int((~keep).sum())


def fit_diffusion(
    steps: Sequence[float],
    displacement: Sequence[float],
    llc: Optional[float] = None,
    llc_se: Optional[float] = None,
    *,
    llc_df: Optional[float] = None,
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
        t > 0 optimizer steps and R(t) = ||w_t - w_0|| >= 0. Points with R = 0
        (log undefined) are dropped and counted (``n_dropped_zero``). A constant
        displacement, or fewer than 5 points with R > 0, raises :class:`UnfitRun`.
    llc, llc_se, llc_df
        Final lambda, its standard error and that se's degrees of freedom
        (``n_used - 1`` for a mean of ``n_used`` estimates; None: treated as
        known). With them ``d_s = 2 lambda alpha`` and its delta-method interval.
    n_grid
        Number of points, evenly spaced in log t, the curve is thinned to.
    method
        Interval method for alpha (module docstring); ``n_boot`` and ``seed``
        matter only for ``"pw-boot"``.
    late_window
        ``"crossover"``: late fit on t >= t_c from a two-segment fit;
        a float f in (0, 1): late fit on the last fraction f of the log-t range;
        ``None``: no late fit.
    """
    from .._validation import check_level

    check_level(level)
    t, R, n_zero = _clean_curve(steps, displacement)
    notes: list[str] = [f"{n_zero} point(s) with R = 0 dropped (log undefined)"] if n_zero else []
    for name, v in (("llc", llc), ("llc_se", llc_se)):
        if v is not None and not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if llc_se is not None and llc_se < 0:
        raise ValueError(f"llc_se must be >= 0, got {llc_se}")
    idx = log_grid(t, n_grid)
    x, y = np.log(t[idx]), np.log(R[idx])
    rng = np.random.default_rng(seed)
    kw = dict(method=method, n_boot=n_boot, level=level, seed=rng)
    whole = fit_loglog(x, y, records=idx, **kw)
    crossover, mask, lw_label = None, None, "none"
    if late_window == "crossover":
        lw_label = "crossover"
        try:
            crossover = fit_crossover(x, y, min_segment=min_segment, level=level, records=idx)
            mask = x >= np.log(crossover.t_c) - 1e-12
        except ValueError as exc:
            notes.append(f"no crossover fit: {exc}")
    elif late_window is not None:
        f = float(late_window)
        if not 0 < f < 1:
            raise ValueError("late_window must be 'crossover', a fraction in (0, 1) or None")
        lw_label = f"last {f:g} of log t"
        mask = x >= x.max() - f * (x.max() - x.min()) - 1e-12
    late = None
    if mask is not None:
        if mask.sum() >= min_late_points:
            late = fit_loglog(x[mask], y[mask], records=idx[mask], **kw)
        else:
            notes.append(f"late window has {int(mask.sum())} < {min_late_points} points; no late fit")
    if llc is not None and llc <= 0:
        notes.append("lambda <= 0: d_s = 2 lambda alpha has the opposite sign to alpha")
    return DiffusionFit(whole=whole, late=late, crossover=crossover,
                        llc=None if llc is None else float(llc),
                        llc_se=None if llc is None else float(llc_se or 0.0),
                        llc_df=None if llc is None or llc_df is None else float(llc_df),
                        n_dropped_zero=n_zero, late_window=lw_label, notes=notes, level=level)
