"""Divergences between distributions over clusters (paper §4.2, Table 2; docs/methods.md, "Divergences").

Conventions (state them in every report):

* **Log base**: natural log everywhere; KL and JS are in **nats**.
* **KL plug-in**: ``KL(P‖Q) = Σ_c P(c) log(P(c)/Q(c))`` with ``0 log 0 = 0``.
  If ``Q(c) = 0`` while ``P(c) > 0`` the value is ``+inf`` — returned
  explicitly (never NaN) and flagged (``kl_infinite``). The plug-in estimate
  from counts is biased upward by about ``(K-1)/(2N)``.
* **KL smoothed**: pseudocount ``a = 0.5`` (Jeffreys/Krichevsky–Trofimov) added
  to every *count* cell of both vectors before normalising:
  ``P̃(c) = (n_c + a) / (N + a K)``. Smoothing is defined on counts only; a
  vector given as probabilities is used as is (and the result says so).
* **JS**: the Jensen–Shannon *divergence*
  ``JS = ½ KL(P‖M) + ½ KL(Q‖M)``, ``M = (P+Q)/2``, in nats, so
  ``0 ≤ JS ≤ log 2`` with equality for disjoint supports. (``scipy``'s
  ``jensenshannon`` returns the *distance* ``sqrt(JS)``; we compute JS directly.)
* **W1**: earth mover's distance between the two cluster distributions with
  ground cost = Euclidean distance between cluster centroids in the
  function-space embedding (standardised, PCA-reduced predictions), computed
  exactly with POT ``ot.emd2(a, b, M)`` on normalised ``a, b``.
* **G-test** of homogeneity: ``scipy.stats.chi2_contingency(table,
  lambda_="log-likelihood", correction=False)`` on the 2×K table of counts;
  all-zero categories are dropped first (and reported). It assumes independent
  draws: for SGLD samples (autocorrelated within chains) it is anti-conservative
  unless the SGLD counts are scaled to an effective sample size.
* **Equivalence** ("≈", H5): the claim "divergence < margin" is supported when
  the one-sided upper ``level`` (default 95 %) bootstrap bound lies below the
  margin (default 0.05). H0 is non-equivalence.

The vectors' divergences live in :mod:`.distances` and the G-test in :mod:`.gtest`; both are
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from .._validation import check_choice, check_float, check_level, check_n_boot
from .bootstrap import (
    SeedLike,
    as_generator,
    category_counts,
    label_positions,
    one_sided_bounds,
    percentile_interval,
    resample_groups,
    resample_runs,
)
from .distances import (  # noqa: F401  (re-exported: the public names of this module before the split)
    DEFAULT_PSEUDOCOUNT,
    centroid_cost,
    check_distribution,
    js_divergence,
    kl_divergence,
    kl_smoothed,
    looks_like_counts,
    smoothed_probabilities,
    to_probabilities,
    wasserstein1,
)
from .gtest import GTestResult, g_test  # noqa: F401  (re-exported)
from .results import Result, estimate_row

__all__ = [
    "to_probabilities",
    "smoothed_probabilities",
    "kl_divergence",
    "kl_smoothed",
    "js_divergence",
    "wasserstein1",
    "centroid_cost",
    "g_test",
    "GTestResult",
    "DivergenceResult",
    "compare_distributions",
    "BootstrapDivergenceResult",
    "bootstrap_divergences",
    "METRICS",
]

METRICS = ("kl", "kl_smoothed", "js", "w1")
DEFAULT_MARGIN = 0.05


# ----------------------------------------------------------------------------
# point comparison
# ----------------------------------------------------------------------------

@dataclass
class DivergenceResult(Result):
    """All divergences between distributions P and Q over the same categories.

    ``kl`` = plug-in KL(P‖Q) (may be ``inf``: see ``kl_infinite``),
    ``kl_smoothed`` = KL on pseudocount-smoothed counts, ``js`` = JS divergence
    (nats), ``w1`` = W1 with centroid ground cost (NaN only if no centroids
    were given, with a note). ``prob_p`` / ``prob_q`` are the two distributions and
    ``prob_*_smoothed`` their smoothed versions (named ``prob_`` so that ``p`` never means
    anything but a p-value).
    """

    categories: list
    prob_p: np.ndarray
    prob_q: np.ndarray
    prob_p_smoothed: np.ndarray
    prob_q_smoothed: np.ndarray
    kl: float
    kl_smoothed: float
    js: float
    w1: float
    kl_infinite: bool
    pseudocount: float
    n_p: Optional[float]
    n_q: Optional[float]
    names: tuple = ("P", "Q")
    notes: list = field(default_factory=list)

    def metrics(self) -> dict:
        return {"kl": self.kl, "kl_smoothed": self.kl_smoothed, "js": self.js, "w1": self.w1}

    def _estimate_rows(self, level: float) -> list[dict]:
        """Point values only (no interval: see :class:`BootstrapDivergenceResult`)."""
        return [estimate_row(m, v) for m, v in self.metrics().items()]

    def to_frame(self) -> pd.DataFrame:
        """One row per category: P, Q, smoothed P, Q."""
        a, b = self.names
        return pd.DataFrame({
            "category": self.categories, f"p_{a}": self.prob_p, f"p_{b}": self.prob_q,
            f"p_{a}_smoothed": self.prob_p_smoothed, f"p_{b}_smoothed": self.prob_q_smoothed,
        })

    def metrics_frame(self) -> pd.DataFrame:
        a, b = self.names
        rows = [
            {"metric": f"KL({a}||{b}) plug-in [nats]", "key": "kl", "value": self.kl},
            {"metric": f"KL({a}||{b}) smoothed (pseudocount {self.pseudocount}) [nats]",
             "key": "kl_smoothed", "value": self.kl_smoothed},
            {"metric": f"JS({a},{b}) [nats]", "key": "js", "value": self.js},
            {"metric": f"W1({a},{b}) centroid cost", "key": "w1", "value": self.w1},
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        a, b = self.names
        lines = [f"Divergences {a} vs {b} over {len(self.categories)} categories "
                 f"(n_{a}={self.n_p}, n_{b}={self.n_q}); natural log (nats)"]
        for _, r in self.metrics_frame().iterrows():
            lines.append(f"  {r['metric']:<50s} {r['value']:.4g}")
        if self.kl_infinite:
            lines.append(f"  FLAG: plug-in KL is infinite ({b} has a zero cell where {a} > 0)")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def _prep(x, kind, pseudocount, name, notes):
    v = check_distribution(x, name)
    if kind == "auto":
        kind = "counts" if looks_like_counts(v) else "prob"
    if kind not in ("counts", "prob"):
        raise ValueError("kind must be 'counts', 'prob' or 'auto'")
    P = v / v.sum()
    if kind == "counts":
        Ps = smoothed_probabilities(v, pseudocount)
        n = float(v.sum())
    else:
        Ps = P.copy()
        n = None
        notes.append(f"{name} given as probabilities: not smoothed (pseudocount applies to counts only)")
    return P, Ps, n


def compare_distributions(
    counts_p,
    counts_q,
    centroids=None,
    *,
    categories: Optional[Sequence] = None,
    pseudocount: float = DEFAULT_PSEUDOCOUNT,
    kind_p: str = "auto",
    kind_q: str = "auto",
    p_smoothed=None,
    q_smoothed=None,
    names: tuple = ("P", "Q"),
) -> DivergenceResult:
    """All Table-2 divergences between P and Q (KL(P‖Q) direction).

    Parameters
    ----------
    counts_p, counts_q : count vectors (or probability vectors) in the same
        category order. ``kind_*='auto'`` treats integer-valued vectors with
        total > 1 as counts.
    centroids : [K, d] centroids of the categories in the embedding (W1 cost).
    pseudocount : added to counts for ``kl_smoothed`` (default 0.5).
    p_smoothed, q_smoothed : optional explicit smoothed distributions (e.g. a
        tempered SGD distribution computed from smoothed counts).
    names : labels used in tables, e.g. ``("SGLD", "tempered SGD")``.
    """
    pseudocount = check_float("pseudocount", pseudocount, 0.0)
    notes: list = []
    P, Ps, n_p = _prep(counts_p, kind_p, pseudocount, names[0], notes)
    Q, Qs, n_q = _prep(counts_q, kind_q, pseudocount, names[1], notes)
    if P.shape != Q.shape:
        raise ValueError("distributions must have the same number of categories")
    if p_smoothed is not None:
        Ps = to_probabilities(p_smoothed, "p_smoothed")
        notes = [n for n in notes if not n.startswith(names[0] + " given")]
    if q_smoothed is not None:
        Qs = to_probabilities(q_smoothed, "q_smoothed")
        notes = [n for n in notes if not n.startswith(names[1] + " given")]
    cats = list(categories) if categories is not None else list(range(P.size))
    kl = kl_divergence(P, Q)
    kl_inf = not np.isfinite(kl)
    kls = kl_divergence(Ps, Qs)
    js = js_divergence(P, Q)
    if centroids is not None:
        w1 = wasserstein1(P, Q, centroids)
    else:
        w1 = float("nan")
        notes.append("W1 not computed: no centroids given (value NaN)")
    if kl_inf:
        notes.append(f"plug-in KL infinite: {names[1]} is zero on categories "
                     f"{[c for c, a, b in zip(cats, P, Q) if a > 0 and b == 0]} where {names[0]} > 0")
    if not np.isfinite(kls):
        notes.append("smoothed KL infinite: a smoothed distribution still has a zero cell")
    return DivergenceResult(cats, P, Q, Ps, Qs, kl, kls, js, w1, kl_inf, pseudocount,
                            n_p, n_q, tuple(names), notes)


# ----------------------------------------------------------------------------
# bootstrap intervals + equivalence
# ----------------------------------------------------------------------------

@dataclass
class BootstrapDivergenceResult(Result):
    """Point divergences with their bootstrap values, the equivalence verdict per metric and a G-test.

    ``boot[m]`` holds the bootstrap values of metric ``m``; every interval comes from them:
    :meth:`conf_int` (two-sided percentile, any level), :meth:`one_sided_bounds` (the one-sided
    lower and upper ``level`` bounds), and ``equivalent[m]`` (the one-sided upper bound at
    ``level`` is below ``margin``).
    """

    point: DivergenceResult
    boot: dict  # metric -> array [n_boot]
    level: float
    n_boot: int
    margin: float
    n_inf: dict  # metric -> number of infinite bootstrap values
    gtest: Optional[GTestResult]
    unit_p: str
    unit_q: str
    notes: list = field(default_factory=list)

    def _estimate_rows(self, level: float) -> list[dict]:
        pm = self.point.metrics()
        return [estimate_row(m, pm[m], None, *percentile_interval(v, level)) for m, v in self.boot.items()]

    def one_sided_bounds(self, metric: str, level: Optional[float] = None) -> tuple[float, float]:
        """The one-sided lower and upper ``level`` bounds of ``metric`` (default: the result's level)."""
        return one_sided_bounds(self.boot[metric], self._level(level))

    @property
    def equivalent(self) -> dict:
        """``{metric: one-sided upper bound at level < margin}`` (an infinite or NaN bound fails)."""
        return {m: bool(self.one_sided_bounds(m)[1] < self.margin) for m in self.boot}

    def to_frame(self) -> pd.DataFrame:
        a, b = self.point.names
        labels = dict(zip(self.point.metrics_frame()["key"], self.point.metrics_frame()["metric"]))
        rows = []
        ci = self.conf_int()
        for m in METRICS:
            if m not in self.boot:
                continue
            lo, hi = ci.loc[m, "ci_low"], ci.loc[m, "ci_high"]
            rows.append({
                "metric": labels[m], "key": m, "estimate": self.point.metrics()[m],
                "ci_low": lo, "ci_high": hi, "ci_level": self.level,
                "upper_one_sided": self.one_sided_bounds(m)[1], "margin": self.margin,
                "equivalent": self.equivalent[m], "n_boot": self.n_boot,
                "n_boot_inf": self.n_inf[m], "unit_" + a: self.unit_p, "unit_" + b: self.unit_q,
            })
        return pd.DataFrame(rows)

    def verdict(self, metric: str = "js") -> str:
        up = self.one_sided_bounds(metric)[1]
        if self.equivalent[metric]:
            return (f"equivalent within margin {self.margin}: one-sided {self.level:.0%} upper bound "
                    f"{up:.4g} < {self.margin}")
        return (f"equivalence NOT shown at margin {self.margin}: one-sided {self.level:.0%} upper "
                f"bound {up:.4g} >= {self.margin}")

    def summary(self) -> str:
        a, b = self.point.names
        lines = [f"Bootstrap divergences {a} vs {b}: {self.n_boot} resamples "
                 f"({a}: resample {self.unit_p}; {b}: resample {self.unit_q}); "
                 f"{self.level:.0%} percentile intervals; equivalence margin {self.margin}"]
        df = self.to_frame()
        for _, r in df.iterrows():
            lines.append(f"  {r['metric']:<50s} {r['estimate']:.4g}  [{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
                         f"  upper={r['upper_one_sided']:.4g}  equivalent={r['equivalent']}")
        if self.gtest is not None:
            lines.append("  " + self.gtest.summary().replace("\n", "\n  "))
        for n in self.point.notes + self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def _default_dist(labels, categories):
    pos = label_positions(labels, categories)
    K = len(categories)

    def f(idx):
        return np.bincount(pos[idx], minlength=K).astype(float)
    return f


def bootstrap_divergences(
    labels_p,
    labels_q,
    categories: Sequence,
    *,
    centroids=None,
    groups_p=None,
    groups_q=None,
    dist_p: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    dist_q: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    smoothed_p: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    smoothed_q: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    n_boot: int = 1000,
    level: float = 0.95,
    margin: float = DEFAULT_MARGIN,
    pseudocount: float = DEFAULT_PSEUDOCOUNT,
    metrics: Sequence[str] = METRICS,
    names: tuple = ("P", "Q"),
    gtest: bool = True,
    seed: SeedLike = None,
) -> BootstrapDivergenceResult:
    """Bootstrap the divergences between two label samples.

    Resampling units: if ``groups_*`` is ``None`` the labels are independent
    runs and are resampled individually (SGD runs); otherwise whole groups
    (SGLD chains) are resampled — never individual samples of a chain.

    ``dist_p(idx)`` / ``dist_q(idx)`` map an index array into the labels to a
    count or probability vector (default: counts of ``labels[idx]`` over
    ``categories``). Use this to bootstrap a derived distribution, e.g. the
    tempered SGD distribution recomputed from resampled runs.
    ``smoothed_*(idx)`` analogously give the smoothed distribution; by default
    counts are smoothed with ``pseudocount`` (0.5).

    The result keeps the bootstrap values: two-sided percentile intervals at any level
    (``conf_int``), one-sided ``level`` bounds (``one_sided_bounds``); ``equivalent[m]`` is True
    when the one-sided upper bound is below ``margin``. ``seed``: int or numpy Generator (whose stream continues).
    """
    level = check_level(level)
    n_boot = check_n_boot(n_boot)
    margin = check_float("margin", margin, 0.0, strict_min=True)
    pseudocount = check_float("pseudocount", pseudocount, 0.0)
    for m in metrics:
        check_choice("metrics", m, METRICS)
    g = as_generator(seed)
    labels_p = np.asarray(labels_p)
    labels_q = np.asarray(labels_q)
    cats = list(categories)
    dp = dist_p or _default_dist(labels_p, cats)
    dq = dist_q or _default_dist(labels_q, cats)

    def smooth(fn, user, idx):
        if user is not None:
            return to_probabilities(user(idx))
        v = np.asarray(fn(idx), dtype=float)
        if looks_like_counts(v):
            return smoothed_probabilities(v, pseudocount)
        return to_probabilities(v)

    all_p = np.arange(labels_p.size)
    all_q = np.arange(labels_q.size)
    cp, cq = dp(all_p), dq(all_q)
    point = compare_distributions(
        cp, cq, centroids, categories=cats, pseudocount=pseudocount,
        p_smoothed=smooth(dp, smoothed_p, all_p), q_smoothed=smooth(dq, smoothed_q, all_q),
        names=names)

    idx_p = (resample_runs(labels_p.size, n_boot, g) if groups_p is None
             else resample_groups(groups_p, n_boot, g))
    idx_q = (resample_runs(labels_q.size, n_boot, g) if groups_q is None
             else resample_groups(groups_q, n_boot, g))
    boot = {m: np.empty(n_boot) for m in metrics}
    for b in range(n_boot):
        ip, iq = idx_p[b], idx_q[b]
        P = to_probabilities(dp(ip))
        Q = to_probabilities(dq(iq))
        if "kl" in boot:
            boot["kl"][b] = kl_divergence(P, Q)
        if "kl_smoothed" in boot:
            boot["kl_smoothed"][b] = kl_divergence(smooth(dp, smoothed_p, ip), smooth(dq, smoothed_q, iq))
        if "js" in boot:
            boot["js"][b] = js_divergence(P, Q)
        if "w1" in boot:
            boot["w1"][b] = wasserstein1(P, Q, centroids) if centroids is not None else np.nan
    notes = []
    if "w1" in boot and centroids is None:
        boot.pop("w1")
        notes.append("W1 skipped in bootstrap: no centroids")
    n_inf = {}
    for m, v in boot.items():
        n_inf[m] = int(np.isinf(v).sum())
        if n_inf[m]:
            notes.append(f"{m}: {n_inf[m]} of {n_boot} bootstrap values infinite (zero cells)")
    gt = None
    if gtest:
        gt = g_test(category_counts(labels_p, cats), category_counts(labels_q, cats), cats)
        if dist_p is not None or dist_q is not None:
            gt.notes.append("G-test compares the raw label counts of the two samples; a derived "
                            "distribution (dist_p/dist_q, e.g. tempered SGD) is not a count vector and is "
                            "not what this test compares")
        if groups_q is not None or groups_p is not None:
            gt.notes.append("G-test treats every sample as independent; within-chain autocorrelation "
                            "makes its p-value anti-conservative")
    unit_p = "runs" if groups_p is None else f"whole groups/chains ({len(np.unique(groups_p))})"
    unit_q = "runs" if groups_q is None else f"whole groups/chains ({len(np.unique(groups_q))})"
    return BootstrapDivergenceResult(point, boot, level, n_boot, margin, n_inf, gt, unit_p, unit_q, notes)
