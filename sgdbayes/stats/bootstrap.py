"""Resampling helpers: bootstrap over independent units (SGD runs, SGLD chains).

The resampling unit matters. SGD runs (one solution per seed) are independent,
so the bootstrap resamples *runs*. SGLD samples are autocorrelated within a
chain, so the bootstrap resamples *whole chains* (a cluster/block bootstrap
with the chain as the block): a resample draws ``n_chains`` chain ids with
replacement and keeps every sample of each drawn chain (docs/methods.md, "Divergences":
resample SGLD chains, not samples).

All randomness comes from a :class:`numpy.random.Generator` passed in as ``seed`` (or
built from an int seed); no global RNG state is touched.

Intervals are percentile intervals (Efron): the ``(1-level)/2`` and
``(1+level)/2`` quantiles of the bootstrap distribution. Infinite bootstrap
values (e.g. a plug-in KL that hit a zero cell) are handled without producing
NaN: quantiles are then taken without interpolation (``method="lower"`` /
``"higher"``), so an interval endpoint may be ``inf`` but never NaN.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .._validation import check_level, check_n_boot

__all__ = [
    "as_generator",
    "resample_runs",
    "resample_groups",
    "group_index",
    "percentile_interval",
    "upper_bound",
    "one_sided_bounds",
    "category_counts",
    "label_positions",
]

SeedLike = Union[None, int, np.random.Generator, np.random.SeedSequence]


def as_generator(seed: SeedLike = None) -> np.random.Generator:
    """Return a numpy Generator (an int/SeedSequence seeds a fresh PCG64; a Generator is used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def resample_runs(n: int, n_boot: int, seed: SeedLike = None) -> np.ndarray:
    """Bootstrap indices over ``n`` independent runs.

    Returns an int array of shape ``[n_boot, n]``; row b holds the indices of
    the b-th resample (drawn uniformly with replacement).
    """
    if n < 1:
        raise ValueError("need at least one run to resample")
    n_boot = check_n_boot(n_boot)
    g = as_generator(seed)
    return g.integers(0, n, size=(n_boot, n))


def group_index(groups: Sequence) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique group ids and, for each, the sample indices belonging to it."""
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError("groups must be 1-D (one chain/group id per sample)")
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    return uniq, members


def resample_groups(groups: Sequence, n_boot: int, seed: SeedLike = None) -> list[np.ndarray]:
    """Bootstrap indices that resample whole groups (e.g. SGLD chains).

    Each resample draws ``G`` group ids with replacement (``G`` = number of
    distinct groups) and concatenates *all* sample indices of each drawn group.
    Returns a list of ``n_boot`` index arrays (lengths differ when groups have
    unequal sizes).
    """
    uniq, members = group_index(groups)
    G = len(uniq)
    if G < 1:
        raise ValueError("need at least one group to resample")
    n_boot = check_n_boot(n_boot)
    g = as_generator(seed)
    draws = g.integers(0, G, size=(n_boot, G))
    return [np.concatenate([members[k] for k in row]) for row in draws]


def label_positions(labels: Sequence, categories: Sequence) -> np.ndarray:
    """Position of each label in the fixed category order (int array).
    Labels not in ``categories`` raise ``ValueError``."""
    labels = np.asarray(labels)
    cats = list(categories)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = {c: i for i, c in enumerate(cats)}
    uniq, inv = np.unique(labels, return_inverse=True)
    try:
        upos = np.array([order[u] for u in uniq.tolist()], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} is not among categories {cats}") from None
    return upos[inv.reshape(-1)]


def category_counts(labels: Sequence, categories: Sequence) -> np.ndarray:
    """Counts of ``labels`` in the fixed order ``categories`` (all categories kept,
    zero counts included). Labels not in ``categories`` raise ``ValueError``."""
    pos = label_positions(labels, categories)
    return np.bincount(pos, minlength=len(list(categories))).astype(np.int64)


def _quantile_safe(values: np.ndarray, q: float, side: str) -> float:
    v = np.asarray(values, dtype=float)
    if np.isnan(v).any():
        raise ValueError("bootstrap values contain NaN; refusing to form an interval silently")
    if np.isfinite(v).all():
        return float(np.quantile(v, q))
    method = "lower" if side == "lower" else "higher"
    return float(np.quantile(v, q, method=method))


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile bootstrap interval at confidence ``level``."""
    level = check_level(level)
    a = (1.0 - level) / 2.0
    v = np.asarray(values, dtype=float)
    return _quantile_safe(v, a, "lower"), _quantile_safe(v, 1.0 - a, "upper")


def upper_bound(values: Sequence[float], level: float = 0.95) -> float:
    """One-sided upper percentile bound: the ``level`` quantile of the bootstrap
    distribution (used for equivalence tests: "is the upper 95 % bound below the
    margin?")."""
    level = check_level(level)
    return _quantile_safe(np.asarray(values, dtype=float), level, "upper")


def one_sided_bounds(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The one-sided lower and upper ``level`` percentile bounds: the ``1 - level`` and ``level``
    quantiles of the bootstrap distribution. Together they are a two-sided interval of coverage
    ``2 level - 1`` (the two one-sided tests of an equivalence claim); the upper one equals
    :func:`upper_bound`."""
    level = check_level(level)
    v = np.asarray(values, dtype=float)
    return _quantile_safe(v, 1.0 - level, "lower"), _quantile_safe(v, level, "upper")
