"""Summaries of a per-run quantity across runs, and the per-run LLC summaries (docs/methods.md).

* :func:`bootstrap_ci`: percentile bootstrap interval (Efron) of the median (or mean) over runs,
  resampling runs with replacement; ``(NaN, NaN)`` with fewer than 3 finite values.
* :func:`mean_ci`: the mean and its Student-t interval, ``mean ± t_{n-1, (1+level)/2} sd / sqrt(n)``.
* :func:`summarize`: both, plus sd, the 5 / 95 % quantiles, min and max, as a :class:`RunSummary`.
* :func:`llc_summaries`: per run, the final λ = mean of the last ``last`` LLC estimates along
  training (App G.1) with se = their sd / sqrt(count), and λ̄ = mean of all estimates (Cor 3.3,
  eq 16) with se likewise. Successive estimates are autocorrelated, so these se are optimistic.

Non-finite values are never averaged silently: they are left out and counted (``n_missing``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd

from .._validation import check_generator, check_int, check_level, check_n_boot
from .results import Result, estimate_row

__all__ = ["bootstrap_ci", "mean_ci", "summarize", "RunSummary", "llc_summaries", "LLCSummaries"]

Stat = Union[str, Callable]


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def _stat_fn(stat: Stat):
    if stat in ("median", np.median):
        return np.median, True
    if stat in ("mean", np.mean):
        return np.mean, True
    if callable(stat):
        return stat, False
    raise ValueError(f"stat must be 'median', 'mean' or a function, got {stat!r}")


def bootstrap_ci(values, stat: Stat = "median", n_boot: int = 2000, level: float = 0.95,
                 seed=0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over runs: (low, high) at coverage ``level``.

    ``n_boot`` resamples of the finite values, drawn with replacement from ``seed`` (an int or a
    numpy Generator, whose stream then continues). ``(NaN, NaN)`` with fewer than 3 finite values.
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    fn, axis_aware = _stat_fn(stat)
    v = _finite(values)
    if v.size < 3:
        return (float("nan"), float("nan"))
    rng = check_generator(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    b = fn(v[idx], axis=1) if axis_aware else np.apply_along_axis(fn, 1, v[idx])
    a = (1 - level) / 2
    return float(np.quantile(b, a)), float(np.quantile(b, 1 - a))


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t interval over runs: ``(mean, low, high)``; NaN interval with < 2 values."""
    from scipy import stats

    level = check_level(level)
    v = _finite(values)
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


@dataclass
class RunSummary(Result):
    """A per-run quantity summarized across runs (:func:`summarize`).

    ``mean`` with a Student-t interval (recomputed at any ``level`` by :meth:`conf_int`),
    ``median`` with a percentile bootstrap interval over runs (computed at ``level`` with
    ``n_boot`` resamples from ``seed``), ``sd``, quantiles ``q05`` / ``q95``, ``min``, ``max``.
    ``n`` finite values were summarized; ``n_missing`` non-finite ones were left out.
    Undefined values are NaN.
    """

    n: int
    n_missing: int
    mean: float
    sd: float
    median: float
    median_ci_low: float
    median_ci_high: float
    q05: float
    q95: float
    min: float
    max: float
    level: float = 0.95
    n_boot: int = 2000
    seed: Optional[int] = None   # the int seed of the median's bootstrap (None: a Generator was passed)

    def _estimate_rows(self, level: float) -> list[dict]:
        from scipy import stats

        se = self.sd / math.sqrt(self.n) if self.n > 1 else float("nan")
        if self.n > 1:
            h = float(stats.t.ppf((1 + level) / 2, self.n - 1) * self.sd / math.sqrt(self.n))
            lo, hi = self.mean - h, self.mean + h
        else:
            lo = hi = float("nan")
        if not math.isclose(level, self.level):
            raise ValueError(f"the median's bootstrap interval was computed at level {self.level:g}; "
                             f"summarize again for level {level:g}")
        return [estimate_row("mean", self.mean, se, lo, hi),
                estimate_row("median", self.median, None, self.median_ci_low, self.median_ci_high)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{k: getattr(self, k) for k in ("n", "n_missing", "mean", "sd", "median",
                                                            "median_ci_low", "median_ci_high", "q05", "q95",
                                                            "min", "max", "level")}])


def summarize(values, level: float = 0.95, seed=0, n_boot: int = 2000) -> RunSummary:
    """Summary of a per-run quantity: n, mean with t interval, sd, median with bootstrap interval,
    5 / 95 % quantiles, min, max (NaN where undefined; sd needs 2 values, the median's interval 3)."""
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    v = np.asarray(values, dtype=float).ravel()
    f = v[np.isfinite(v)]
    seed_int = int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
    nan = float("nan")
    if f.size == 0:
        return RunSummary(0, int(v.size), nan, nan, nan, nan, nan, nan, nan, nan, nan, level, n_boot, seed_int)
    m, _, _ = mean_ci(f, level)
    mlo, mhi = bootstrap_ci(f, "median", n_boot=n_boot, level=level, seed=seed)
    return RunSummary(n=int(f.size), n_missing=int(v.size - f.size), mean=m,
                      sd=float(f.std(ddof=1)) if f.size > 1 else nan, median=float(np.median(f)),
                      median_ci_low=mlo, median_ci_high=mhi, q05=float(np.quantile(f, 0.05)),
                      q95=float(np.quantile(f, 0.95)), min=float(f.min()), max=float(f.max()),
                      level=level, n_boot=n_boot, seed=seed_int)


# --------------------------------------------------------------------------- LLC along training

@dataclass
class LLCSummaries(Result):
    """Per-run summaries of the LLC estimates along training (:func:`llc_summaries`).

    Arrays with one entry per run: ``llc_final`` (mean of the last ``last`` finite estimates,
    App G.1) and ``llc_final_se``; ``llc_mean`` (λ̄, the mean of all finite estimates, Cor 3.3)
    and ``llc_mean_se``; ``n_negative_estimates`` and ``n_missing`` (non-finite estimates,
    skipped). A run without any finite estimate has NaN everywhere; with one estimate se = 0.
    """

    llc_final: np.ndarray
    llc_final_se: np.ndarray
    llc_mean: np.ndarray
    llc_mean_se: np.ndarray
    n_negative_estimates: np.ndarray
    n_missing: np.ndarray
    last: int
    llc_final_n: np.ndarray = None  # finite estimates averaged into llc_final (its se has n - 1 df)

    @property
    def llc_final_df(self) -> np.ndarray:
        """Degrees of freedom of ``llc_final_se`` (NaN where fewer than 2 estimates were averaged)."""
        n = np.asarray(self.llc_final_n, float)
        return np.where(n > 1, n - 1, np.nan)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"llc_final": self.llc_final, "llc_final_se": self.llc_final_se,
                             "llc_mean": self.llc_mean, "llc_mean_se": self.llc_mean_se,
                             "n_negative_estimates": self.n_negative_estimates, "n_missing": self.n_missing})


def llc_summaries(llc, last: int = 10) -> LLCSummaries:
    """Final λ and λ̄ per run from the ``[runs, estimates]`` array of LLC estimates along training."""
    last = check_int("last", last, 1)
    llc = np.asarray(llc, dtype=float)
    if llc.ndim != 2:
        raise ValueError(f"llc must be [runs, estimates], got shape {llc.shape}")
    K = llc.shape[0]
    fin, fin_se, bar, bar_se = (np.full(K, np.nan) for _ in range(4))
    n_fin = np.zeros(K, dtype=np.int64)
    for k in range(K):
        v = llc[k][np.isfinite(llc[k])]
        if v.size == 0:
            continue
        tail = v[-last:]
        n_fin[k] = tail.size
        fin[k] = tail.mean()
        fin_se[k] = tail.std(ddof=1) / math.sqrt(tail.size) if tail.size > 1 else 0.0
        bar[k] = v.mean()
        bar_se[k] = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0
    return LLCSummaries(fin, fin_se, bar, bar_se, (llc < 0).sum(1), (~np.isfinite(llc)).sum(1), last, n_fin)
