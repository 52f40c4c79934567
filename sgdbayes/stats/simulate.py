"""Simulated displacement curves with a known truth (for coverage tests and examples).

* :func:`simulate_curve`: ``log R(t) = c + alpha log t + u_t`` (eq 17) on a
  log-spaced grid, u an AR(1) process in the grid index,
  ``u_i = phi u_{i-1} + e_i``, e_i ~ N(0, sigma^2), stationary start.
* :func:`simulate_two_segment`: continuous two-segment curve in log-log space
  with a known crossover t_c (App B.3):
  ``log R = c + a_early x + (a_late - a_early)(x - log t_c)_+``, x = log t.
* :func:`simulate_runs`: a long-format runs table (columns run, step,
  displacement, llc, plus covariates) such as ``python -m sgdbayes.analyze`` reads.

Everything takes a seed or Generator; no global random state.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import pandas as pd

__all__ = ["log_steps", "ar1", "simulate_curve", "simulate_two_segment", "simulate_runs"]

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
