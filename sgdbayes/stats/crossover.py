"""Crossover t_c between early and late diffusion: two-segment (hinge) fit in log-log space (App B.3).

Model, with ``x = log t``::

    log R = c + a_early x + (a_late - a_early) (x - log t_c)_+ + u,

``u`` a CAR(1) error as in :mod:`sgdbayes.stats.ar_errors` (clock ``log t`` or
``record``). Knots are searched over a grid 4x finer than the observed log t
values (at least ``min_segment`` points on each side). Point estimates: ``t_c``
is the posterior median of the knot (so it always lies inside its own
equal-tailed interval; the least-squares knot, which ignores the error
correlation, can fall outside it), and ``alpha_early`` / ``alpha_late`` the
least-squares hinge slopes at the candidate knot nearest to it.

Intervals (docs/intervals.md): the posterior of the knot and of the slope change
``delta = a_late - a_early`` under the hinge model, with a flat prior on log t_c
over the searched range, flat on (c, a_early, delta), 1/s on the noise scale,
Jeffreys ``(1 - rho^2)^(-1/2)`` on rho and equal weight on the two clocks. Given
the knot, rho and the clock, (c, a, delta) and s integrate out in closed form
(restricted likelihood ``|C|^-1/2 |W'W|^-1/2 SSE^-(n-3)/2``), so the posterior is
an exact sum over a grid of knots x rho x clocks; ``t_c``'s interval is its
equal-tailed credible interval. Integrating over rho is what the earlier
parametric bootstrap (fixed at an estimated rho, 85 % coverage) lacked; the
measured coverage is in docs/intervals.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import special

from .ar_errors import _phis, clock_gaps, rho_grid, typical
from .results import Result, estimate_row

__all__ = ["CrossoverFit", "fit_crossover", "knot_candidates", "knot_posterior", "least_squares_knot",
           "t_c_intervals"]


def knot_candidates(x: np.ndarray, min_segment: int) -> np.ndarray:
    """Candidate knots: interior observed x values, refined 4x between neighbours."""
    n = x.size
    grid = x[min_segment - 1: n - min_segment + 1]
    cand = np.unique(np.concatenate([np.linspace(a, b, 4, endpoint=False)
                                     for a, b in zip(grid[:-1], grid[1:])] + [grid[-1:]]))
    return cand[(cand >= x[min_segment - 1]) & (cand <= x[n - min_segment])]


def _hinge_design(x: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """[K, n, 3] designs (1, x, (x - knot)_+) for every candidate knot."""
    X = np.empty((cand.size, x.size, 3))
    X[:, :, 0] = 1.0
    X[:, :, 1] = x
    X[:, :, 2] = np.maximum(x[None, :] - cand[:, None], 0.0)
    return X


def least_squares_knot(x: np.ndarray, Y: np.ndarray, cand: np.ndarray):
    """Per row of Y: index of the least-squares knot and the hinge coefficients there."""
    X = _hinge_design(x, cand)
    P = np.linalg.pinv(X)                                  # K, 3, n
    beta = np.einsum("kpn,rn->rkp", P, Y)                  # R, K, 3
    fitted = np.einsum("knp,rkp->rkn", X, beta)
    sse = ((Y[:, None, :] - fitted) ** 2).sum(-1)
    j = sse.argmin(1)
    return j, beta[np.arange(Y.shape[0]), j]


def _weights(v: np.ndarray) -> np.ndarray:
    """Trapezoid cell widths of a sorted grid (a flat prior on a non-uniform grid)."""
    if v.size == 1:
        return np.ones(1)
    w = np.empty(v.size)
    w[1:-1] = (v[2:] - v[:-2]) / 2
    w[0] = (v[1] - v[0]) / 2
    w[-1] = (v[-1] - v[-2]) / 2
    return w


def knot_posterior(x: np.ndarray, records: np.ndarray, Y: np.ndarray, cand: np.ndarray,
                   with_delta: bool = True):
    """Log posterior over (clock, rho, knot) for each row of Y [R, n].

    Returns ``lp`` [G, K, R] (G = clocks x rho values, flattened), with
    ``with_delta`` the conditional posterior location / scale of delta [G, K, R]
    (else None), and (rho, clock index) of the G components, rho at the median gap.
    """
    R, n = Y.shape
    X = _hinge_design(x, cand)
    Xlag = np.concatenate([np.zeros((cand.size, 1, 3)), X[:, :-1]], axis=1)
    Ylag = np.concatenate([np.zeros((R, 1)), Y[:, :-1]], axis=1)
    log_prior_knot = np.log(_weights(cand))
    lps, locs, scales, rhos, which = [], [], [], [], []
    for ci, gaps in enumerate(clock_gaps(x, records).values()):
        grid = rho_grid(gaps)
        r_med = typical(grid, gaps)  # the prior is Jeffreys' on the correlation at the median gap
        log_prior_rho = np.log(np.maximum(_weights(r_med), 1e-300)) - 0.5 * np.log(1.0 - r_med ** 2)
        rhos.append(r_med)
        which.append(np.full(grid.size, ci))
        for k, ph in enumerate(_phis(gaps, grid)):
            sc = 1.0 / np.sqrt(1.0 - ph ** 2)
            W = (X - ph[None, :, None] * Xlag) * sc[None, :, None]
            Wt = W.transpose(0, 2, 1)
            WtW = Wt @ W
            inv = np.linalg.inv(WtW)
            V = (Y - ph * Ylag) * sc
            WtV = (Wt @ V.T).transpose(0, 2, 1)                        # K, R, 3
            b = WtV @ inv                                              # inv is symmetric
            sse = np.maximum((V * V).sum(1)[None, :] - (b * WtV).sum(-1), 1e-300)
            logdet = np.linalg.slogdet(WtW)[1] + np.log(1.0 - ph[1:] ** 2).sum()
            lp = -0.5 * logdet[:, None] - 0.5 * (n - 3) * np.log(sse)
            lps.append(lp + log_prior_rho[k] + log_prior_knot[:, None])
            if with_delta:
                locs.append(b[..., 2])
                scales.append(np.sqrt(sse / (n - 3) * inv[:, 2, 2][:, None]))
    lp, comp = np.stack(lps), (np.concatenate(rhos), np.concatenate(which))
    if not with_delta:
        return lp, None, None, comp
    return lp, np.stack(locs), np.stack(scales), comp


def _knot_cdf(cand: np.ndarray, pk: np.ndarray):
    """Piecewise-linear CDF of log t_c: mass pk[i] centred on cand[i], 0 and 1 at the range's ends."""
    mid = np.cumsum(pk) - pk / 2
    return np.concatenate([cand[:1], cand, cand[-1:]]), np.concatenate([[0.0], mid, [1.0]])


def _equal_tailed(values: np.ndarray, cdf: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    return float(np.interp(a, cdf, values)), float(np.interp(1.0 - a, cdf, values))


def _knot_mass(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised posterior weights [G, K] of one row's log posterior, and the knot marginal [K]."""
    w = np.exp(lp - lp.max())
    w /= w.sum()
    return w, w.sum(0)


def t_c_intervals(cand: np.ndarray, lp: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed posterior intervals for t_c, one per row of ``lp`` [G, K, R] (as fit_crossover)."""
    out = np.empty((2, lp.shape[-1]))
    for r in range(lp.shape[-1]):
        knots, cdf = _knot_cdf(cand, _knot_mass(lp[..., r])[1])
        out[:, r] = np.exp(_equal_tailed(knots, cdf, level))
    return out[0], out[1]


@dataclass
class CrossoverFit(Result):
    """Two-segment (hinge) fit in log-log space, App B.3 (module docstring).

    ``t_c`` is the posterior median knot, ``alpha_early`` / ``alpha_late`` the hinge
    slopes there, ``delta = alpha_late - alpha_early``. Intervals (``conf_int``)
    for ``t_c`` and ``delta`` come from the stored posterior (``log_knots`` /
    ``knot_cdf`` and ``delta_grid`` / ``delta_cdf``), so any level can be asked
    for. ``rho`` is the posterior mean of the error correlation, ``clock`` the
    clock with the larger posterior mass.
    """

    t_c: float
    alpha_early: float
    alpha_late: float
    rho: float
    clock: str
    log_knots: np.ndarray
    knot_cdf: np.ndarray
    delta_grid: np.ndarray
    delta_cdf: np.ndarray
    n_points: int
    level: float = 0.95
    method: str = "hinge posterior"
    notes: list = field(default_factory=list)

    @property
    def delta(self) -> float:
        return self.alpha_late - self.alpha_early

    def _estimate_rows(self, level: float) -> list[dict]:
        lo, hi = _equal_tailed(self.log_knots, self.knot_cdf, level)
        dlo, dhi = _equal_tailed(self.delta_grid, self.delta_cdf, level)
        return [estimate_row("t_c", self.t_c, None, math.exp(lo), math.exp(hi)),
                estimate_row("alpha_early", self.alpha_early),
                estimate_row("alpha_late", self.alpha_late),
                estimate_row("delta", self.delta, None, dlo, dhi)]

    @property
    def significant(self) -> bool:
        """True when the ``level`` interval for delta = alpha_late - alpha_early excludes 0."""
        lo, hi = _equal_tailed(self.delta_grid, self.delta_cdf, self.level)
        return bool(lo > 0 or hi < 0)


def _delta_cdf(w: np.ndarray, loc: np.ndarray, scale: np.ndarray, df: int, n_grid: int = 201):
    """CDF of the mixture sum_i w_i t_df(loc_i, scale_i) on a grid spanning its mass."""
    order = np.argsort(w)[::-1]
    n_keep = min(int(np.searchsorted(np.cumsum(w[order]), (1.0 - 1e-6) * w.sum())) + 1, 500)
    keep = order[:n_keep]  # the components holding all but 1e-6 of the mass (at most 500)
    w, loc, scale = w[keep] / w[keep].sum(), loc[keep], scale[keep]
    lo = float(np.min(loc - 12 * scale))
    hi = float(np.max(loc + 12 * scale))
    grid = np.linspace(lo, hi, n_grid)
    cdf = np.empty(n_grid)
    for i in range(0, n_grid, 64):
        z = (grid[i:i + 64, None] - loc[None, :]) / scale[None, :]
        cdf[i:i + 64] = special.stdtr(df, z) @ w
    return grid, np.maximum.accumulate(np.clip(cdf, 0.0, 1.0))


def fit_crossover(log_t: np.ndarray, log_R: np.ndarray, min_segment: int = 8, level: float = 0.95,
                  records: Optional[np.ndarray] = None) -> CrossoverFit:
    """Find the crossover time t_c between early and late diffusion (App B.3; module docstring).

    ``records`` are the points' positions in the logged sequence (the ``record``
    clock; default: their positions in ``log_t``).
    """
    from .._validation import check_level

    check_level(level)
    x = np.asarray(log_t, dtype=float)
    y = np.asarray(log_R, dtype=float)
    n = x.size
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("log_t and log_R must be 1-d arrays of equal length")
    if n < 2 * min_segment + 1:
        raise ValueError(f"need at least {2 * min_segment + 1} points for a crossover fit, got {n}")
    records = np.arange(n) if records is None else np.asarray(records, float)
    cand = knot_candidates(x, min_segment)
    lp, loc, scale, (rho, which) = knot_posterior(x, records, y[None, :], cand)
    w, pk = _knot_mass(lp[..., 0])
    log_knots, knot_cdf = _knot_cdf(cand, pk)
    log_tc = float(np.interp(0.5, knot_cdf, log_knots))  # posterior median of log t_c
    k = int(np.argmin(np.abs(cand - log_tc)))
    beta = np.linalg.lstsq(_hinge_design(x, cand[k:k + 1])[0], y, rcond=None)[0][None, :]
    dgrid, dcdf = _delta_cdf(w.ravel(), loc[..., 0].ravel(), scale[..., 0].ravel(), n - 3)
    names = list(clock_gaps(x, records))
    wg = w.sum(1)
    by_clock = np.bincount(which, weights=wg, minlength=len(names))
    rho_mean = float((wg * rho).sum())
    return CrossoverFit(t_c=math.exp(log_tc), alpha_early=float(beta[0, 1]),
                        alpha_late=float(beta[0, 1] + beta[0, 2]), rho=rho_mean,
                        clock=names[int(np.argmax(by_clock))], log_knots=log_knots, knot_cdf=knot_cdf,
                        delta_grid=dgrid, delta_cdf=dcdf, n_points=n, level=level)
