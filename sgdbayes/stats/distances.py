"""Divergences and distances between two distributions over the same categories (paper Table 2;
docs/methods.md, "Divergences"). Natural log everywhere: KL and JS in nats.

* KL plug-in ``KL(P‖Q) = Σ P log(P/Q)`` (``0 log 0 = 0``; ``+inf`` where Q = 0 < P);
* smoothed counts ``(n_c + a) / (N + a K)`` (pseudocount a, default 0.5);
* JS divergence ``½ KL(P‖M) + ½ KL(Q‖M)``, ``M = (P + Q)/2`` (the divergence, not scipy's
  ``jensenshannon`` distance), ``0 <= JS <= log 2``;
* W1 with ground cost = Euclidean distance between cluster centroids (exact, POT ``ot.emd2``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_PSEUDOCOUNT", "check_distribution", "to_probabilities", "smoothed_probabilities",
           "looks_like_counts", "kl_divergence", "kl_smoothed", "js_divergence", "centroid_cost", "wasserstein1"]

DEFAULT_PSEUDOCOUNT = 0.5


def check_distribution(x, name="x") -> np.ndarray:
    v = np.asarray(x, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D")
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains non-finite values")
    if (v < 0).any():
        raise ValueError(f"{name} has negative entries")
    if v.sum() <= 0:
        raise ValueError(f"{name} has zero total mass")
    return v


def to_probabilities(x, name: str = "x") -> np.ndarray:
    """Normalise a count or probability vector to sum 1 (validates input)."""
    v = check_distribution(x, name)
    return v / v.sum()


def smoothed_probabilities(counts, pseudocount: float = DEFAULT_PSEUDOCOUNT) -> np.ndarray:
    """``(n_c + a) / (N + a K)`` — additive smoothing of a count vector."""
    v = check_distribution(counts, "counts")
    if pseudocount < 0:
        raise ValueError("pseudocount must be >= 0")
    v = v + pseudocount
    return v / v.sum()


def looks_like_counts(v: np.ndarray) -> bool:
    return bool(np.allclose(v, np.round(v)) and v.sum() > 1.0 + 1e-9)


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Elementwise p log(p/q) with 0 log 0 = 0 and +inf where q=0<p."""
    out = np.zeros_like(p)
    pos = p > 0
    with np.errstate(divide="ignore"):
        out[pos] = p[pos] * (np.log(p[pos]) - np.log(q[pos]))
    return out


def kl_divergence(p, q) -> float:
    """Plug-in Kullback–Leibler divergence ``KL(P‖Q) = Σ P log(P/Q)`` in nats.

    Inputs are count or probability vectors over the same categories (each is
    normalised). Returns ``inf`` (explicitly, never NaN) when some ``Q(c) = 0``
    with ``P(c) > 0``; ``0 log 0 = 0``.
    """
    P, Q = to_probabilities(p, "p"), to_probabilities(q, "q")
    if P.shape != Q.shape:
        raise ValueError("p and q must have the same length")
    if ((Q == 0) & (P > 0)).any():
        return float("inf")
    return float(max(_xlogy_ratio(P, Q).sum(), 0.0))


def kl_smoothed(counts_p, counts_q, pseudocount: float = DEFAULT_PSEUDOCOUNT) -> float:
    """KL between pseudocount-smoothed count vectors (pseudocount ``a``, default 0.5):
    ``KL(P̃‖Q̃)`` with ``P̃(c) = (n_c + a)/(N + aK)``. Always finite for ``a > 0``."""
    return kl_divergence(smoothed_probabilities(counts_p, pseudocount),
                         smoothed_probabilities(counts_q, pseudocount))


def js_divergence(p, q) -> float:
    """Jensen–Shannon divergence in nats: ``½KL(P‖M) + ½KL(Q‖M)``, ``M=(P+Q)/2``.

    Bounded: ``0 ≤ JS ≤ log 2``; ``= log 2`` iff supports are disjoint.
    """
    P, Q = to_probabilities(p, "p"), to_probabilities(q, "q")
    if P.shape != Q.shape:
        raise ValueError("p and q must have the same length")
    M = 0.5 * (P + Q)
    js = 0.5 * _xlogy_ratio(P, M).sum() + 0.5 * _xlogy_ratio(Q, M).sum()
    return float(min(max(js, 0.0), np.log(2.0)))


def centroid_cost(centroids) -> np.ndarray:
    """Euclidean distance matrix between centroid rows (ground cost for W1)."""
    C = np.asarray(centroids, dtype=float)
    if C.ndim == 1:
        C = C[:, None]
    diff = C[:, None, :] - C[None, :, :]
    return np.sqrt((diff ** 2).sum(-1))


def wasserstein1(p, q, centroids=None, cost=None) -> float:
    """W1 (earth mover's) distance between cluster distributions, exact LP via
    POT ``ot.emd2``. Ground cost = Euclidean distance between cluster centroids
    in the embedding (or a given ``cost`` matrix).

    Categories with zero mass in both ``p`` and ``q`` are dropped before the
    solve (their centroid is then not needed). A category with mass whose
    centroid is not finite raises ``ValueError``.
    """
    import ot  # POT

    P, Q = to_probabilities(p, "p"), to_probabilities(q, "q")
    if P.shape != Q.shape:
        raise ValueError("p and q must have the same length")
    if cost is None:
        if centroids is None:
            raise ValueError("give centroids (K x d) or a cost matrix")
        C = np.asarray(centroids, dtype=float)
        if C.ndim == 1:
            C = C[:, None]
        if C.shape[0] != P.size:
            raise ValueError("centroids must have one row per category")
        keep = (P > 0) | (Q > 0)
        if not np.isfinite(C[keep]).all():
            raise ValueError("a category with mass has a non-finite centroid")
        M = centroid_cost(C[keep])
    else:
        M_full = np.asarray(cost, dtype=float)
        keep = (P > 0) | (Q > 0)
        M = M_full[np.ix_(keep, keep)]
        if not np.isfinite(M).all():
            raise ValueError("cost matrix has non-finite entries on categories with mass")
    a = P[keep] / P[keep].sum()
    b = Q[keep] / Q[keep].sum()
    if a.size == 1:
        return 0.0
    val = float(ot.emd2(a, b, np.ascontiguousarray(M)))
    return max(val, 0.0)
