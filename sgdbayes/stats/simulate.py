"""Simulated displacement curves with a known truth (for coverage tests and examples).

* :func:`simulate_curve`: ``log R(t) = c + alpha log t + u_t`` (eq 17) on a
  log-spaced grid, u an AR(1) process in the grid index,
  ``u_i = phi u_{i-1} + e_i``, e_i ~ N(0, sigma^2), stationary start.
* :func:`simulate_two_segment`: continuous two-segment curve in log-log space
  with a known crossover t_c (App B.3):
  ``log R = c + a_early x + (a_late - a_early)(x - log t_c)_+``, x = log t.
* :func:`simulate_runs`: a long-format runs table (columns run, step,
  displacement, llc, plus covariates) such as ``python -m sgdbayes.analyze`` reads.
* :func:`design_steps` / :func:`car_curves`: the step grids users log (log,
  regular, log + regular as sgdbayes' engine writes it, irregular gaps) and
  batches of curves with CAR(1) noise on a ``log t`` or ``record`` clock, for the
  coverage suite (:mod:`sgdbayes.stats.coverage`).

Everything takes a seed or Generator; no global random state.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import pandas as pd

__all__ = ["log_steps", "ar1", "simulate_curve", "simulate_two_segment", "simulate_runs", "record_steps",
           "design_steps", "GRIDS", "car_curves"]

GRIDS = ("log", "regular", "log+regular", "irregular")

RngLike = Union[int, np.random.Generator, None]


def _rng(seed: RngLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def log_steps(n_points: int = 60, t_max: float = 1e4, t_min: float = 1.0) -> np.ndarray:
    """Integer steps roughly evenly spaced in log t (duplicates removed, so possibly < n_points)."""
    return np.unique(np.round(np.geomspace(t_min, t_max, n_points))).astype(float)


def ar1(n: int, phi: float, sigma: float, seed: RngLike = None) -> np.ndarray:
    """Stationary AR(1) series ``u_i = phi u_{i-1} + e_i``, e_i ~ N(0, sigma^2)."""
    if not -1 < phi < 1:
        raise ValueError("phi must be in (-1, 1)")
    rng = _rng(seed)
    e = rng.normal(0.0, sigma, size=n)
    u = np.empty(n)
    u[0] = e[0] / np.sqrt(1 - phi ** 2)
    for i in range(1, n):
        u[i] = phi * u[i - 1] + e[i]
    return u


def simulate_curve(alpha: float = 0.4, c: float = 0.0, phi: float = 0.5, sigma: float = 0.05,
                   n_points: int = 60, t_max: float = 1e4, seed: RngLike = None):
    """(steps, R) with ``log R = c + alpha log t + AR(1)``; truth is ``alpha``."""
    t = log_steps(n_points, t_max)
    u = ar1(t.size, phi, sigma, seed)
    return t, np.exp(c + alpha * np.log(t) + u)


def simulate_two_segment(alpha_early: float = 0.8, alpha_late: float = 0.3, t_c: float = 100.0,
                         c: float = 0.0, phi: float = 0.5, sigma: float = 0.03, n_points: int = 80,
                         t_max: float = 1e5, seed: RngLike = None):
    """(steps, R) of a continuous two-segment log-log curve with known crossover ``t_c``."""
    t = log_steps(n_points, t_max)
    x = np.log(t)
    mean = c + alpha_early * x + (alpha_late - alpha_early) * np.maximum(x - np.log(t_c), 0.0)
    return t, np.exp(mean + ar1(t.size, phi, sigma, seed))


def simulate_runs(n_runs: int = 12, n_steps: int = 3000, every: int = 10, llc_every: int = 100,
                  seed: RngLike = 0, crossover: bool = True) -> pd.DataFrame:
    """Long-format runs table with covariates ``lr``, ``batch_size``, ``optimizer``.

    Steps 1..n_steps: all steps up to 100, then every ``every`` steps. The late
    exponent depends on the learning rate (alpha_late = 0.25 + 20 lr), the LLC
    (logged every ``llc_every`` steps, missing elsewhere) drifts to a final
    value around 20 with noise. Known truth per run is in ``df.attrs["truth"]``.
    """
    rng = _rng(seed)
    lrs = np.array([0.001, 0.003, 0.01])
    batches = np.array([32, 128])
    steps = np.unique(np.r_[np.arange(1, 101), np.arange(100, n_steps + 1, every)]).astype(float)
    frames, truth = [], []
    for r in range(n_runs):
        lr = float(lrs[r % lrs.size])
        bs = int(batches[(r // lrs.size) % batches.size])
        a_late = 0.25 + 20 * lr + rng.normal(0, 0.02)
        a_early = a_late + (0.4 if crossover else 0.0)
        tc = float(np.exp(rng.uniform(np.log(30), np.log(150))))
        x = np.log(steps)
        mean = -3 + a_early * x + (a_late - a_early) * np.maximum(x - np.log(tc), 0.0)
        logR = mean + ar1(steps.size, 0.9, 0.01, rng)
        lam_final = float(rng.uniform(12, 30))
        llc = np.full(steps.size, np.nan)
        at = (steps % llc_every == 0)
        k = at.sum()
        llc[at] = lam_final * (1 - 0.5 * np.exp(-steps[at] / 500)) + rng.normal(0, 1.0, k)
        frames.append(pd.DataFrame({"run": f"run{r:02d}", "step": steps.astype(int),
                                    "displacement": np.exp(logR), "llc": llc, "lr": lr,
                                    "batch_size": bs, "optimizer": "sgd"}))
        truth.append({"run": f"run{r:02d}", "alpha_late": a_late, "alpha_early": a_early, "t_c": tc,
                      "llc_final": lam_final})
    df = pd.concat(frames, ignore_index=True)
    df.attrs["truth"] = pd.DataFrame(truth)
    return df


def record_steps(n_steps: int, every: int, n_log: int) -> np.ndarray:
    """The steps sgdbayes' engine records (same formula as ``engine.record_grid``): ``n_log``
    geometric points round(geomspace(1, n_steps)), every ``every``-th step, and ``n_steps``."""
    parts = [np.arange(every, n_steps + 1, every), [n_steps]]
    if n_log > 0:
        parts.append(np.rint(np.geomspace(1, n_steps, n_log)))
    g = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
    return g[(g >= 1) & (g <= n_steps)]


def design_steps(grid: str, n_points: int, seed: RngLike = 0) -> np.ndarray:
    """About ``n_points`` logged steps of one of :data:`GRIDS`.

    ``log``: round(geomspace(1, T)) with duplicates removed (dense integers at
    the start); ``regular``: every 10 steps; ``log+regular``: :func:`record_steps`
    with 100 geometric points (n_points // 2 when fewer) and every 10 steps;
    ``irregular``: log+regular with four blocks of 7 % of the records removed
    (a logger that stalled), the blocks placed by ``seed``.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    n = int(n_points)
    if grid == "log":
        T, k = max(1e4, 20.0 * n), n
        t = np.unique(np.round(np.geomspace(1, T, k)))
        while t.size < n:
            k += n - t.size
            t = np.unique(np.round(np.geomspace(1, T, k)))
        return t.astype(float)
    if grid == "regular":
        return 10.0 * np.arange(1, n + 1)
    if grid == "log+regular":
        n_log, steps = min(100, n // 2), 10 * n
        g = record_steps(steps, 10, n_log)
        for _ in range(40):
            if abs(g.size - n) <= 1:
                break
            steps = max(20, int(steps * n / g.size))
            g = record_steps(steps, 10, n_log)
        return g.astype(float)
    g = design_steps("log+regular", int(round(n / 0.72)))
    rng = _rng(seed)
    keep = np.ones(g.size, bool)
    block = max(1, int(0.07 * g.size))
    for _ in range(4):
        s = int(rng.integers(5, g.size - block - 1))
        keep[s:s + block] = False
    return g[keep]


def car_curves(steps: np.ndarray, mean: np.ndarray, phi: float, sigma: float, n_curves: int,
               clock: str = "log t", seed: RngLike = None, n_ref: int = 64) -> np.ndarray:
    """``[n_curves, n]`` values of log R = ``mean`` + CAR(1) noise (stationary sd sigma / sqrt(1 - phi^2)).

    Clock ``"record"``: AR(1) from one logged step to the next with coefficient
    ``phi``. Clock ``"log t"``: an Ornstein-Uhlenbeck process in log t whose
    correlation is ``phi`` at the gap of ``n_ref`` points evenly spaced in log t
    over the curve (so that ``phi`` means the same on every grid).
    """
    if not 0 <= phi < 1:
        raise ValueError("phi must be in [0, 1)")
    t = np.asarray(steps, float)
    if clock == "record":
        gaps = np.ones(t.size - 1)
    elif clock == "log t":
        x = np.log(t)
        gaps = np.diff(x) / ((x[-1] - x[0]) / (n_ref - 1))
    else:
        raise ValueError(f"clock must be 'log t' or 'record', got {clock!r}")
    rng = _rng(seed)
    sd = sigma / np.sqrt(1.0 - phi ** 2)
    ph = phi ** gaps
    s = np.sqrt(1.0 - ph ** 2)
    e = rng.standard_normal((n_curves, t.size))
    u = np.empty_like(e)
    u[:, 0] = e[:, 0]
    for j in range(1, t.size):
        u[:, j] = ph[j - 1] * u[:, j - 1] + s[j - 1] * e[:, j]
    return np.asarray(mean, float)[None, :] + sd * u
