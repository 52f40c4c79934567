"""Straight-line regression with serially correlated errors, and its calibrated t interval.

Model, for points ``j = 1..n`` of one curve (docs/intervals.md)::

    y_j = c + a x_j + u_j,    u_j = phi_j u_{j-1} + e_j,    phi_j = rho ** g_j,

a continuous-time AR(1) (Ornstein-Uhlenbeck) error observed at uneven times:
``g_j`` is the gap between points j-1 and j on a *clock*, in units of the
clock's smallest gap, so ``rho`` is the correlation of the closest neighbours
(:func:`typical` gives it at the median gap, what fits report). The grid of rho
values resolves correlations at both scales, so that a design whose gaps differ
by orders of magnitude (a dense early block of logged steps) is fitted as well
as an even one. Two clocks are offered and the one with the larger restricted likelihood is used:

* ``"log t"``: g proportional to the gap in log t. Fluctuations of a self-similar
  (power-law) process are stationary in log t, so this is the physical default.
* ``"record"``: g proportional to the number of logged records between the points
  (noise that is AR(1) from one logged point to the next, as simulated curves and
  some loggers have it).

On a grid evenly spaced in log t both clocks coincide and the model is the
Prais-Winsten AR(1) regression.

Estimation: ``rho`` maximises the restricted (REML) likelihood
``-1/2 log|C| - 1/2 log|W'W| - (n-2)/2 log SSE`` over a grid (refined by a
parabola through the best three grid points); ``(c, a)`` by GLS at that rho.

Interval: the GLS t statistic ``T = (a_hat - a) / se_gls`` has a distribution that
depends on the true rho and is heavy-tailed near rho = 1. A table, computed by
simulation for the curve's own design (x and clock gaps; pure function of them,
fixed seed), holds for true rho on a grid both the distribution of rho_hat and the
median and level-quantile of |T|. The ``level`` interval uses the level-quantile
of |T| at ``rho_up``, the one-sided upper confidence bound for rho at ``UPPER``
(0.9): the rho for which P(rho_hat* >= rho_hat) = 0.9. The reference is written
as a scaled Student-t ``s * t_nu``: nu matches the tail shape (median vs
level-quantile of |T|) at the higher bound at ``TAIL_UPPER`` (0.99), s then
makes the ``level`` interval exact. The fit so reports a calibrated standard
error ``s * se_gls`` on ``nu`` degrees of freedom (heavy tails: small nu), whose
small p-values stay valid (Holm needs p-values far below 0.05).
Evaluating the reference at an upper bound instead of at rho_hat protects
against the downward bias and the spread of rho_hat; 0.9 was chosen by the
coverage suite (docs/intervals.md, benchmarks/coverage.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["UPPER", "TAIL_UPPER", "CLOCKS", "clock_gaps", "rho_grid", "typical", "CarFit", "fit_car",
           "car_noise", "critical_value", "t_quantile", "prais_winsten", "ar1_noise"]

#: correlations resolved by the estimation grid and the calibration nodes, at the smallest and at
#: the median gap of a design (the two coincide on an even grid)
_GRID_BASE = np.concatenate([np.linspace(0.1, 0.8, 8), 1.0 - np.geomspace(0.18, 0.002, 22)])
_NODE_BASE = np.array([0.3, 0.5, 0.65, 0.75, 0.82, 0.87, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97,
                       0.98, 0.985, 0.99, 0.995])
_N_PER_NODE = 250           # simulated curves per node
_TABLE_SEED = 20261202      # fixed: the table is a pure function of the design
UPPER = 0.9                 # confidence of the upper bound for rho at which T is calibrated
TAIL_UPPER = 0.99           # ... and of the bound whose tail shape gives the df (p-values, Holm)
CLOCKS = ("log t", "record")


def clock_gaps(x: np.ndarray, records: np.ndarray) -> dict[str, np.ndarray]:
    """Gaps of the two clocks in units of each clock's smallest gap; one entry when they coincide."""
    gx = np.diff(np.asarray(x, float))
    gk = np.diff(np.asarray(records, float))
    if np.any(gx <= 0) or np.any(gk <= 0):
        raise ValueError("x and records must be strictly increasing")
    gx = gx / gx.min()
    gk = gk / gk.min()
    if np.allclose(gx, gk, rtol=1e-3, atol=1e-3):
        return {"log t": gx}
    return {"log t": gx, "record": gk}


def _union(base: np.ndarray, gaps: np.ndarray, extra: Sequence[float]) -> np.ndarray:
    """Correlations at the smallest gap: ``base`` itself and ``base`` read at the median gap."""
    g_med = float(np.median(gaps))
    v = np.unique(np.concatenate([base, base ** (1.0 / g_med), np.asarray(extra, float)]))
    keep = np.concatenate([[True], np.diff(v) > 1e-4 * (1.0 - v[1:] + 1e-3)])
    return v[keep]


def rho_grid(gaps: np.ndarray) -> np.ndarray:
    """The grid (correlation at the smallest gap) on which rho is estimated for these gaps."""
    return _union(_GRID_BASE, gaps, (-0.5, -0.25, 0.0))


def _nodes(gaps: np.ndarray) -> np.ndarray:
    return _union(_NODE_BASE, gaps, (-0.4, 0.0))


def typical(rho: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Correlation at the median gap from the correlation at the smallest gap."""
    rho = np.asarray(rho, float)
    return np.sign(rho) * np.abs(rho) ** float(np.median(gaps))


def _phis(gaps: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``phi[k, j] = rho_k ** g_j`` (phi[:, 0] = 0), sign kept for negative rho."""
    ph = np.zeros((rho.size, gaps.size + 1))
    ph[:, 1:] = np.sign(rho)[:, None] * np.abs(rho)[:, None] ** gaps[None, :]
    return np.clip(ph, -0.99999, 0.99999)


def _detrend(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y minus its OLS fit on X, the OLS coefficients [R, p]). GLS is linear, so fitting the OLS
    residuals and adding the OLS coefficients back gives the same estimates, without the loss of
    digits that a steep trend with tiny noise causes in SSE = V'V - b'W'V."""
    beta = Y @ np.linalg.pinv(X).T
    return Y - beta @ X.T, beta


def _profile(X: np.ndarray, Y: np.ndarray, gaps: np.ndarray, rho: np.ndarray):
    """GLS at each rho for every row of Y: REML log-lik [K, R], coef [K, R, p], (W'W)^-1 [K, p, p], sse [K, R].

    The transformed response is ``V = A * y - B * y_lag`` with ``A = 1/sqrt(1 - phi^2)``,
    ``B = phi A``, so V'V and W'V for all rho at once are a few matrix products.
    """
    R, n = Y.shape
    p = X.shape[1]
    Y0, beta = _detrend(X, Y)
    ph = _phis(gaps, rho)
    A = 1.0 / np.sqrt(1.0 - ph ** 2)
    Bm = ph * A
    Xlag = np.vstack([np.zeros((1, p)), X[:-1]])
    W = X[None] * A[..., None] - Xlag[None] * Bm[..., None]              # K, n, p
    WtW = np.einsum("knp,knq->kpq", W, W)
    inv = np.linalg.inv(WtW)
    logdet = np.linalg.slogdet(WtW)[1] + np.log(1.0 - ph[:, 1:] ** 2).sum(1)
    Ylag = np.concatenate([np.zeros((R, 1)), Y0[:, :-1]], axis=1)
    VV = (Y0 * Y0) @ (A * A).T - 2.0 * (Y0 * Ylag) @ (A * Bm).T + (Ylag * Ylag) @ (Bm * Bm).T   # R, K
    WtV = np.stack([Y0 @ (W[..., q] * A).T - Ylag @ (W[..., q] * Bm).T for q in range(p)], axis=-1)  # R, K, p
    b = sum(inv[None, :, :, q] * WtV[:, :, None, q] for q in range(p))   # R, K, p
    floor = 1e-300 + 1e-28 * (Y * Y).sum(1)[:, None]
    sse = np.maximum(VV - (b * WtV).sum(-1), floor)                       # R, K
    ll = -0.5 * logdet[None, :] - 0.5 * (n - p) * np.log(sse)
    coef = b + beta[:, None, :]
    return ll.T, coef.transpose(1, 0, 2), inv, sse.T


def _refine(ll: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through the best grid point and its neighbours (per column)."""
    K = grid.size
    k = np.clip(ll.argmax(0), 1, K - 2)
    cols = np.arange(ll.shape[1])
    y0, y1, y2 = ll[k - 1, cols], ll[k, cols], ll[k + 1, cols]
    den = y0 - 2 * y1 + y2
    off = np.where(den < 0, 0.5 * (y0 - y2) / np.where(den < 0, den, -1.0), 0.0)
    off = np.clip(off, -1.0, 1.0)
    pos = k + off
    best = ll.argmax(0)
    pos = np.where((best == 0) | (best == K - 1), best, pos)
    return np.interp(pos, np.arange(K), grid)


@dataclass
class CarFit:
    """GLS fits of the rows of Y with CAR(1) errors (arrays over rows)."""

    coef: np.ndarray     # R, p
    se: np.ndarray       # R, p   (s^2 (W'W)^-1, s^2 = SSE / (n - p))
    rho: np.ndarray      # R
    loglik: np.ndarray   # R      (REML, at the refined rho)
    sigma: np.ndarray    # R      (marginal sd of u)


def fit_car(X: np.ndarray, Y: np.ndarray, gaps: np.ndarray) -> CarFit:
    """REML rho (grid + parabola) and GLS at it, for each row of ``Y`` [R, n] with design ``X`` [n, p].

    ``rho`` is the correlation at the smallest gap (:func:`typical` gives it at the median gap).
    """
    grid = rho_grid(gaps)
    Y = np.atleast_2d(np.asarray(Y, float))
    X = np.asarray(X, float)
    ll, _, _, _ = _profile(X, Y, gaps, grid)
    rho = _refine(ll, grid)
    n, p = X.shape
    # GLS at each row's own rho: rows grouped by unique rho values would not vectorise; do it directly
    ph = np.clip(np.sign(rho)[:, None] * np.abs(rho)[:, None] ** gaps[None, :], -0.99999, 0.99999)
    ph = np.concatenate([np.zeros((rho.size, 1)), ph], axis=1)                 # R, n
    sc = 1.0 / np.sqrt(1.0 - ph ** 2)
    Xlag = np.vstack([np.zeros((1, p)), X[:-1]])
    W = (X[None] - ph[..., None] * Xlag[None]) * sc[..., None]                 # R, n, p
    Y0, beta = _detrend(X, Y)
    Ylag = np.concatenate([np.zeros((Y.shape[0], 1)), Y0[:, :-1]], axis=1)
    V = (Y0 - ph * Ylag) * sc
    WtW = np.stack([np.stack([(W[..., a] * W[..., c]).sum(1) for c in range(p)], -1) for a in range(p)], 1)
    WtV = np.stack([(W[..., a] * V).sum(1) for a in range(p)], -1)
    inv = np.linalg.inv(WtW)
    b0 = (inv * WtV[:, None, :]).sum(-1)
    b = b0 + beta
    floor = 1e-300 + 1e-28 * (Y * Y).sum(1)
    sse = np.maximum((V * V).sum(1) - (b0 * WtV).sum(1), floor)
    s2 = sse / (n - p)
    se = np.sqrt(s2[:, None] * np.diagonal(inv, axis1=1, axis2=2))
    logdet = np.linalg.slogdet(WtW)[1] + np.log(1.0 - ph[:, 1:] ** 2).sum(1)
    loglik = -0.5 * logdet - 0.5 * (n - p) * np.log(sse)
    return CarFit(coef=b, se=se, rho=rho, loglik=loglik, sigma=np.sqrt(s2))


def car_noise(rng: np.random.Generator, rho: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Rows of unit-variance CAR(1) noise, one row per entry of ``rho``, stationary start."""
    rho = np.asarray(rho, float)
    n = gaps.size + 1
    e = rng.standard_normal((rho.size, n))
    u = np.empty_like(e)
    u[:, 0] = e[:, 0]
    ph = np.clip(np.sign(rho)[:, None] * np.abs(rho)[:, None] ** gaps[None, :], -0.99999, 0.99999)
    s = np.sqrt(1.0 - ph ** 2)
    for j in range(1, n):
        u[:, j] = ph[:, j - 1] * u[:, j - 1] + s[:, j - 1] * e[:, j]
    return u


@functools.lru_cache(maxsize=256)
def _table(xkey: tuple, gkey: tuple, level: float):
    """(nodes [N], sorted rho_hat* per node [N, B], median and level-quantile of |T*| per node [N])
    for one design (memoised; a pure function of its arguments: the seed is fixed)."""
    x = np.asarray(xkey)
    gaps = np.asarray(gkey)
    X = np.column_stack([np.ones_like(x), x])
    rng = np.random.default_rng(_TABLE_SEED)
    nodes = _nodes(gaps)
    u = car_noise(rng, np.repeat(nodes, _N_PER_NODE), gaps)
    f = fit_car(X, u, gaps)
    T = np.abs(f.coef[:, 1] / f.se[:, 1]).reshape(nodes.size, _N_PER_NODE)
    rhos = np.sort(f.rho.reshape(nodes.size, _N_PER_NODE), axis=1)
    q50, qlev = (np.maximum.accumulate(np.quantile(T, p, axis=1)) for p in (0.5, level))
    return nodes, rhos, q50, qlev


@functools.lru_cache(maxsize=16)
def _ratio_table(level: float) -> tuple[np.ndarray, np.ndarray]:
    """(log nu grid, ratio of the (1+level)/2 to the 0.75 quantile of t_nu), ratio decreasing in nu."""
    lnu = np.linspace(math.log(0.5), math.log(1e4), 400)
    nu = np.exp(lnu)
    return lnu, stats.t.ppf((1.0 + level) / 2.0, nu) / stats.t.ppf(0.75, nu)


def _t_shape(q50: np.ndarray, qlev: np.ndarray, level: float, df_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale s, df nu) of the scaled Student-t ``s * t_nu`` whose |.| has median q50 and
    ``level``-quantile qlev (nu in [0.5, df_max]; df_max is the exact df when rho is known)."""
    lnu, ratio = _ratio_table(float(level))
    nu = np.exp(np.interp(-(qlev / q50), -ratio, lnu))  # ratio decreases with nu
    nu = np.minimum(nu, df_max)
    return qlev / stats.t.ppf((1.0 + level) / 2.0, nu), nu


def _upper_bound(nodes: np.ndarray, rhos: np.ndarray, rho_hat: np.ndarray, conf: float) -> np.ndarray:
    """Where P(rho_hat* >= rho_hat | rho) first reaches ``conf`` on the node grid (linear
    interpolation; the top node when it never does, the bottom one when it always does)."""
    B = rhos.shape[1]
    H = 1.0 - np.stack([np.searchsorted(rhos[i], rho_hat, side="left") for i in range(nodes.size)]) / B
    H = np.maximum.accumulate(H, axis=0)  # nondecreasing in rho
    above = H >= conf
    first = np.where(above.any(0), above.argmax(0), nodes.size - 1)
    cols = np.arange(rho_hat.size)
    j = np.clip(first, 1, nodes.size - 1)
    h0, h1 = H[j - 1, cols], H[j, cols]
    frac = np.clip((conf - h0) / np.maximum(h1 - h0, 1e-12), 0.0, 1.0)
    up = nodes[j - 1] + frac * (nodes[j] - nodes[j - 1])
    up = np.where(first == 0, nodes[0], up)
    return np.where(~above.any(0), nodes[-1], up)


def critical_value(x: np.ndarray, gaps: np.ndarray, rho_hat: np.ndarray, level: float):
    """Calibrated reference ``s * t_nu`` for T = (a_hat - a)/se_gls, per entry of ``rho_hat``.

    ``s`` makes the ``level`` interval ``a_hat +- t_{(1+level)/2, nu} s se_gls`` equal to
    the ``level``-quantile of |T| at ``rho_up`` (the upper confidence bound at
    ``UPPER``); ``nu`` is the df of the scaled t matching the median and
    ``level``-quantile of |T| at the higher bound at ``TAIL_UPPER`` (heavier tails:
    p-values far below 1 - level stay valid, which Holm needs). Returns (s, nu, rho_up).
    """
    x = np.asarray(x, float)
    xn = (x - x[0]) / (x[-1] - x[0])
    nodes, rhos, q50, qlev = _table(tuple(np.round(xn, 6)), tuple(np.round(gaps, 6)), float(level))
    rho_hat = np.atleast_1d(np.asarray(rho_hat, float))
    rho_up = _upper_bound(nodes, rhos, rho_hat, UPPER)
    rho_tail = _upper_bound(nodes, rhos, rho_hat, TAIL_UPPER)
    _, nu = _t_shape(np.interp(rho_tail, nodes, q50), np.interp(rho_tail, nodes, qlev), level, x.size - 3.0)
    s_arr = np.interp(rho_up, nodes, qlev) / stats.t.ppf((1.0 + level) / 2.0, nu)
    return s_arr, nu, rho_up


def t_quantile(level: float, df: float) -> float:
    """Two-sided Student-t quantile ``t_{(1+level)/2, df}``."""
    return float(stats.t.ppf((1.0 + level) / 2.0, df))


# --------------------------------------------------------------------------- legacy (method "pw-boot")
def prais_winsten(x: np.ndarray, Y: np.ndarray, iters: int = 10):
    """Iterated Prais-Winsten FGLS of ``Y[b] = c + a x + u``, u ~ AR(1) in the point index.

    The AR coefficient is bias-corrected at every iteration,
    ``rho_bc = rho_hat + (1 + 4 rho_hat)/n``. Vectorised over rows; returns
    (c, a, se_a, rho, sigma) arrays. This was sgdbayes' estimator before the
    CAR(1)/REML fit above; it is kept for comparison (``method="pw-boot"``).
    """
    Y = np.atleast_2d(Y)
    B, n = Y.shape
    xc = x - x.mean()
    a = (Y - Y.mean(1, keepdims=True)) @ xc / (xc @ xc)
    c = Y.mean(1) - a * x.mean()
    for _ in range(iters):
        r = Y - c[:, None] - a[:, None] * x
        den = (r * r).sum(1)
        rho = np.where(den > 0, (r[:, 1:] * r[:, :-1]).sum(1) / np.where(den > 0, den, 1.0), 0.0)
        rho = np.clip(rho + (1.0 + 4.0 * rho) / n, -0.99, 0.99)
        s = np.sqrt(1.0 - rho ** 2)
        z = np.concatenate([s[:, None], np.broadcast_to((1.0 - rho)[:, None], (B, n - 1))], axis=1)
        w = np.concatenate([(s * x[0])[:, None], x[1:][None, :] - rho[:, None] * x[:-1][None, :]], axis=1)
        v = np.concatenate([(s * Y[:, 0])[:, None], Y[:, 1:] - rho[:, None] * Y[:, :-1]], axis=1)
        zz, zw, ww = (z * z).sum(1), (z * w).sum(1), (w * w).sum(1)
        zv, wv = (z * v).sum(1), (w * v).sum(1)
        det = zz * ww - zw ** 2
        c = (ww * zv - zw * wv) / det
        a = (zz * wv - zw * zv) / det
    e = v - c[:, None] * z - a[:, None] * w
    sigma2 = (e * e).sum(1) / (n - 2)
    return c, a, np.sqrt(sigma2 * zz / det), rho, np.sqrt(sigma2)


def ar1_noise(rng: np.random.Generator, rho: np.ndarray, sigma: np.ndarray, B: int, n: int) -> np.ndarray:
    """[len(rho), B, n] AR(1) noise with innovation sd ``sigma`` per row, stationary start."""
    rho = np.asarray(rho, float)
    z = rng.standard_normal((rho.size, B, n)) * np.asarray(sigma, float)[:, None, None]
    u = np.empty_like(z)
    u[..., 0] = z[..., 0] / np.sqrt(np.maximum(1.0 - rho ** 2, 1e-6))[:, None]
    for j in range(1, n):
        u[..., j] = rho[:, None] * u[..., j - 1] + z[..., j]
    return u
