"""Jumps in training curves: change points, their alignment across series, and tail weight.

Three procedures (docs/grokking.md states the choices):

* :func:`change_points` -- change points in the mean of one series by PELT (``ruptures``,
  cost ``l2``) on the series divided by a robust noise scale (the MAD of first differences
  / (0.6745 sqrt 2)), penalty ``penalty * log(n)`` (a BIC-like penalty in noise units).
  Each change point's jump size is the difference of the neighbouring segment means.
* :func:`test_jump_alignment` -- do the jumps of series B fall near the jumps of series A
  (within ``window`` grid points) more often than chance? Statistic per run: the share of A's
  jumps with a B jump within the window, minus its mean under the null. Null: B's jump times
  circularly shifted by an independent uniform offset per run (keeps B's spacing, breaks its
  timing relative to A). p-value: Monte Carlo permutation over the shifts, one-sided;
  interval: bootstrap over runs of the mean excess. Returns a
  :class:`~sgdbayes.stats.results.HypothesisTest` (claim: excess > 0).
* :func:`test_heavy_tail` -- Hill estimate of the tail index of positive values (the largest
  ``tail_fraction`` of them), interval from a bootstrap over runs (asymptotic
  alpha (1 +- z / sqrt(k)) with one run); claim: tail index < 2 (infinite variance, the
  Lévy-stable range).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .._validation import check_float, check_generator, check_int, check_level
from .results import HypothesisTest, Verdict

__all__ = ["change_points", "jump_sizes", "alignment_statistic", "test_jump_alignment", "hill_tail_index",
           "test_heavy_tail"]


def _ruptures():
    try:
        import ruptures
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("change-point detection needs the `ruptures` package: "
                          "pip install 'sgdbayes[changepoint]' (or pip install ruptures)") from None
    return ruptures


def noise_scale(y: np.ndarray) -> float:
    """Robust noise sd of a series from its first differences: MAD(diff) / (0.6745 sqrt 2)."""
    d = np.diff(np.asarray(y, float))
    if d.size == 0:
        return 0.0
    return float(np.median(np.abs(d - np.median(d))) / (0.6745 * math.sqrt(2)))


def change_points(y, penalty: float = 3.0, min_size: int = 2) -> np.ndarray:
    """Indices ``i`` (into ``y``) where a new segment starts, by PELT on the mean (module doc).

    A constant series, or one shorter than ``2 * min_size``, has none. NaN entries are an error
    (drop a diverged run first)."""
    y = np.asarray(y, float).ravel()
    if not np.isfinite(y).all():
        raise ValueError("change_points: the series has NaN/inf values; drop diverged runs or cut the series")
    penalty = check_float("penalty", penalty, 0.0, strict_min=True)
    min_size = check_int("min_size", min_size, 1)
    n = y.size
    if n < 2 * min_size:
        return np.zeros(0, np.int64)
    s = noise_scale(y)
    if s <= 0:
        s = float(np.std(y))
    if s <= 0:
        return np.zeros(0, np.int64)
    algo = _ruptures().Pelt(model="l2", min_size=min_size, jump=1).fit((y / s).reshape(-1, 1))
    bkps = algo.predict(pen=penalty * math.log(n))
    return np.asarray([b for b in bkps if b < n], np.int64)


def jump_sizes(y, cps) -> np.ndarray:
    """Mean of the segment after each change point minus the mean of the segment before."""
    y = np.asarray(y, float).ravel()
    edges = [0, *[int(c) for c in cps], y.size]
    means = np.array([y[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    return np.diff(means)


def alignment_statistic(a_times, b_times, window: int) -> float:
    """Share of ``a_times`` with some ``b_times`` within ``window`` (NaN when A has no jump)."""
    a, b = np.asarray(a_times, float), np.asarray(b_times, float)
    if a.size == 0:
        return float("nan")
    if b.size == 0:
        return 0.0
    return float(np.mean(np.min(np.abs(a[:, None] - b[None, :]), 1) <= window))


def _shift_table(a: np.ndarray, b: np.ndarray, window: int, n: int) -> np.ndarray:
    """The statistic for every circular shift 0..n-1 of B's jump times: ``[n]``."""
    if b.size == 0:
        return np.zeros(n)
    shifted = (b[None, :] + np.arange(n)[:, None]) % n                       # [n, |B|]
    d = np.abs(a[None, :, None] - shifted[:, None, :]).min(2)                # [n, |A|]
    return (d <= window).mean(1)


def test_jump_alignment(a_runs: Sequence, b_runs: Sequence, n: int, window: int, *, id: str, claim: str,
                        n_perm: int = 999, n_boot: int = 999, level: float = 0.95, seed=0,
                        names: tuple[str, str] = ("A", "B")) -> HypothesisTest:
    """Permutation test that B's jumps fall within ``window`` grid points of A's (module doc).

    ``a_runs`` / ``b_runs``: per run, the change-point indices of the two series on a common grid of
    ``n`` points. Runs where A has no jump carry no information and are left out (``n_excluded``).
    """
    n, window = check_int("n", n, 2), check_int("window", window, 0)
    n_perm, n_boot = check_int("n_perm", n_perm, 1), check_int("n_boot", n_boot, 1)
    level = check_level(level)
    rng = check_generator(seed)
    if len(a_runs) != len(b_runs):
        raise ValueError(f"a_runs has {len(a_runs)} runs, b_runs {len(b_runs)}")
    pairs = [(np.asarray(a, np.int64), np.asarray(b, np.int64)) for a, b in zip(a_runs, b_runs) if len(a)]
    stat = f"mean over runs of (share of {names[0]} jumps with a {names[1]} jump within {window} grid points - its null mean)"
    test = f"circular-shift permutation of {names[1]}'s jump times per run ({n_perm} draws), one-sided"
    excluded = len(a_runs) - len(pairs)
    if not pairs:
        return HypothesisTest.decided(id, claim, stat, float("nan"), float("nan"), float("nan"), None, test, level,
                                      direction="greater", window=f"{window} grid points", n_excluded=excluded,
                                      override=(Verdict.UNTESTABLE, f"no run has a {names[0]} jump"))
    obs = np.array([alignment_statistic(a, b, window) for a, b in pairs])
    table = np.stack([_shift_table(a, b, window, n) for a, b in pairs])      # [runs, n]; shift 0 = observed
    null = table.mean(1)                                                     # exact null mean per run
    excess = obs - null
    total = float(obs.sum())
    shifts = rng.integers(0, n, size=(n_perm, len(pairs)))
    perm = table[np.arange(len(pairs))[None, :], shifts].sum(1)
    p = float((1 + np.sum(perm >= total - 1e-12)) / (n_perm + 1))
    est = float(excess.mean())
    if len(pairs) > 1:
        boots = excess[rng.integers(0, len(pairs), size=(n_boot, len(pairs)))].mean(1)
        lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    else:
        lo = hi = float("nan")
    return HypothesisTest.decided(id, claim, stat, est, lo, hi, p, test, level, direction="greater",
                                  window=f"{window} grid points", n_tested=len(pairs), n_excluded=excluded,
                                  details={"observed_share": float(obs.mean()), "null_share": float(null.mean()),
                                           "per_run_excess": excess.tolist()})


def hill_tail_index(x, tail_fraction: float = 0.1) -> tuple[float, int]:
    """Hill estimate of the tail index alpha of the positive values of ``x``:
    1 / mean(log(X_(i) / X_(k+1))) over the k = ceil(tail_fraction * n) largest. Returns (alpha, k)."""
    x = np.asarray(x, float).ravel()
    x = np.sort(x[np.isfinite(x) & (x > 0)])[::-1]
    tail_fraction = check_float("tail_fraction", tail_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
    k = int(math.ceil(tail_fraction * x.size))
    if k < 2 or k >= x.size:
        return float("nan"), k
    h = float(np.mean(np.log(x[:k] / x[k])))
    return (1.0 / h if h > 0 else float("nan")), k


def test_heavy_tail(runs: Sequence, *, id: str, claim: str, what: str, tail_fraction: float = 0.1,
                    n_boot: int = 999, level: float = 0.95, seed=0, threshold: float = 2.0) -> HypothesisTest:
    """Is the tail index of the pooled positive values below ``threshold`` (Lévy-stable range)?

    ``runs``: one array of values per run. Interval: bootstrap over runs (several runs) or the
    Hill estimator's asymptotic normal interval alpha (1 +- z / sqrt(k)) (one run)."""
    from scipy import stats as sst

    level = check_level(level)
    rng = check_generator(seed)
    runs = [np.asarray(r, float).ravel() for r in runs]
    alpha, k = hill_tail_index(np.concatenate(runs) if runs else np.zeros(0), tail_fraction)
    stat = f"Hill tail index of {what} (largest {100 * tail_fraction:g} %)"
    if len(runs) > 1 and math.isfinite(alpha):
        boots = np.array([hill_tail_index(np.concatenate([runs[i] for i in rng.integers(0, len(runs), len(runs))]),
                                          tail_fraction)[0] for _ in range(check_int("n_boot", n_boot, 1))])
        boots = boots[np.isfinite(boots)]
        lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots.size else (np.nan, np.nan)
        how = f"bootstrap over {len(runs)} runs"
    else:
        z = sst.norm.ppf((1 + level) / 2)
        lo, hi = alpha * (1 - z / math.sqrt(max(k, 1))), alpha * (1 + z / math.sqrt(max(k, 1)))
        how = "asymptotic Hill interval"
    return HypothesisTest.decided(id, claim, stat, alpha, lo, hi, None, f"interval only ({how}), k = {k}", level,
                                  threshold=threshold, direction="less", n_tested=len(runs),
                                  details={"k": int(k), "tail_fraction": float(tail_fraction)})
