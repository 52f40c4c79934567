"""Clustering SGD solutions in function space (paper §4.2, App G.4; docs/methods.md#posterior-concentration).

Weight space has permutation and rescaling symmetries, so solutions are
clustered by *what they compute*: each network's predictions (probabilities or
logits) on a fixed probe set (training inputs plus a grid over the input box,
see :func:`probe_inputs`).

Pipeline of :class:`FunctionSpaceClusterer` (all transforms fit on the SGD
solutions only):

1. flatten ``[n_models, n_probe, n_out] -> [n_models, n_probe * n_out]``;
2. standardise each feature (``StandardScaler``; constant features keep scale 1);
3. PCA to ``n_components`` dimensions (the *embedding*);
4. HDBSCAN (``hdbscan.HDBSCAN(prediction_data=True)``); new points (e.g. SGLD
   samples) are assigned with ``hdbscan.approximate_predict``. HDBSCAN's noise
   label ``-1`` is a category of its own (``"noise"``) in every distribution.
5. If HDBSCAN finds fewer than two clusters (all noise, or a single cluster) the
   clusterer falls back to a *stated* partition: a Gaussian mixture (full
   covariance) with k >= 2 chosen by BIC over k = 2..``max_k``; new points are
   assigned with ``gmm.predict``. ``partition_kind_ = "gmm_fallback"`` and every
   cluster-level comparison must carry the label
   ``"partition without separated basins"``.

Cluster structure is a *result* (``structure_``, a :class:`StructureReport`):
HDBSCAN's density-based validity index (DBCV) on the embedding, GMM BIC over
k = 1..8 and the k-means silhouette over k = 2..8.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from .bootstrap import SeedLike, as_generator, category_counts
from .results import Result, estimate_row

__all__ = [
    "FunctionSpaceClusterer",
    "StructureReport",
    "cluster_table",
    "probe_inputs",
    "category_names",
    "NOISE",
    "FALLBACK_LABEL",
]

NOISE = -1
FALLBACK_LABEL = "partition without separated basins"
HDBSCAN_LABEL = "HDBSCAN density clusters"


def category_names(categories: Sequence[int]) -> list[str]:
    """``[0, 1, -1] -> ["C0", "C1", "noise"]``."""
    return ["noise" if c == NOISE else f"C{c}" for c in categories]


def _flatten(predictions) -> np.ndarray:
    X = np.asarray(predictions, dtype=float)
    if X.ndim == 1:
        raise ValueError("predictions must be [n_models, n_probe, n_out] or [n_models, n_features]")
    X = X.reshape(X.shape[0], -1)
    if not np.isfinite(X).all():
        raise ValueError("predictions contain non-finite values")
    return X


@dataclass
class StructureReport(Result):
    """Is there cluster structure at all? (docs/methods.md, "Cluster structure": measure it first.)

    ``validity_index``: HDBSCAN's DBCV in [-1, 1] on the embedding (NaN, with a
    note, when undefined: fewer than two clusters or a numerical failure).
    ``gmm_bic``: BIC of a full-covariance Gaussian mixture for k = 1..max_k
    (lower is better); ``gmm_best_k`` its argmin (k = 1 means "one blob").
    ``silhouette``: k-means silhouette for k = 2..max_k; ``silhouette_best_k``
    its argmax and ``silhouette_best`` the value there (values near 0–0.25
    indicate no substantial structure, Kaufman & Rousseeuw).
    """

    n_samples: int
    n_components: int
    explained_variance: float
    hdbscan_n_clusters: int
    hdbscan_noise_fraction: float
    validity_index: float
    gmm_bic: dict
    gmm_best_k: int
    silhouette: dict
    silhouette_best_k: Optional[int]
    silhouette_best: float
    partition_kind: str
    partition_label: str
    n_partition_clusters: int
    min_cluster_size: int
    min_samples: Optional[int]
    notes: list = field(default_factory=list)

    @property
    def separated_basins(self) -> bool:
        """True only when HDBSCAN found >= 2 density clusters (no fallback)."""
        return self.partition_kind == "hdbscan"

    def _estimate_rows(self, level: float) -> list[dict]:
        """The structure measures as point values (no intervals)."""
        return [estimate_row("validity_index", self.validity_index),
                estimate_row("hdbscan_noise_fraction", self.hdbscan_noise_fraction),
                estimate_row("silhouette_best", self.silhouette_best),
                estimate_row("explained_variance", self.explained_variance)]

    def to_frame(self) -> pd.DataFrame:
        rows = [
            ("n_samples", self.n_samples), ("n_components (PCA)", self.n_components),
            ("explained variance (PCA)", self.explained_variance),
            ("HDBSCAN clusters", self.hdbscan_n_clusters),
            ("HDBSCAN noise fraction", self.hdbscan_noise_fraction),
            ("HDBSCAN min_cluster_size", self.min_cluster_size),
            ("HDBSCAN min_samples", self.min_samples),
            ("HDBSCAN validity index (DBCV)", self.validity_index),
            ("GMM BIC best k (1..)", self.gmm_best_k),
            ("k-means silhouette best k", self.silhouette_best_k),
            ("k-means silhouette at best k", self.silhouette_best),
            ("partition", self.partition_kind), ("partition label", self.partition_label),
            ("partition clusters", self.n_partition_clusters),
        ]
        rows += [(f"GMM BIC k={k}", v) for k, v in self.gmm_bic.items()]
        rows += [(f"silhouette k={k}", v) for k, v in self.silhouette.items()]
        return pd.DataFrame(rows, columns=["quantity", "value"])

    def summary(self) -> str:
        lines = [
            f"Cluster structure ({self.n_samples} solutions, PCA {self.n_components} dims, "
            f"{self.explained_variance:.1%} variance):",
            f"  HDBSCAN (min_cluster_size={self.min_cluster_size}, min_samples={self.min_samples}): "
            f"{self.hdbscan_n_clusters} clusters, noise fraction {self.hdbscan_noise_fraction:.2f}, "
            f"validity index {self.validity_index:.3g}",
            f"  GMM BIC prefers k = {self.gmm_best_k}",
            f"  k-means silhouette best at k = {self.silhouette_best_k}: {self.silhouette_best:.3g}",
            f"  partition used: {self.partition_kind} ({self.n_partition_clusters} clusters) — "
            f"{self.partition_label}",
        ]
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


class FunctionSpaceClusterer(ClusterMixin, BaseEstimator):
    """Cluster network solutions by their predictions on a probe set.

    Parameters
    ----------
    n_components : PCA dimensions (capped at min(n_samples, n_features)).
    min_cluster_size, min_samples : HDBSCAN parameters.
    fallback : ``"gmm"`` (default; BIC-chosen Gaussian mixture with k >= 2 when
        HDBSCAN finds < 2 clusters) or ``"none"`` (keep HDBSCAN's labels even if
        all noise / one cluster).
    max_k : largest k for the GMM BIC scan, the silhouette scan and the fallback.
    structure : compute the :class:`StructureReport` at fit time.
    random_state : int seed for PCA / GMM / k-means.
    n_threads : BLAS/OpenMP threads during fit/predict (default 1: these are
        small problems and thread pools oversubscribe a shared CPU).

    Attributes
    ----------
    labels_ : labels of the fitted (SGD) solutions; ``-1`` = noise.
    categories_ : fixed category order shared by all distributions
        (clusters 0..K-1, then ``-1`` for HDBSCAN partitions).
    category_names_ : ``["C0", ..., "noise"]``.
    partition_kind_ : ``"hdbscan"`` or ``"gmm_fallback"`` (or ``"hdbscan_degenerate"``
        with ``fallback="none"``).
    partition_label_ : text for reports (``"partition without separated basins"``
        for the fallback).
    embedding_ : PCA embedding of the fitted solutions.
    centroids_ : [n_categories, n_components] mean embedding per category (NaN
        row for a category with no fitted member, e.g. noise when none).
    structure_ : :class:`StructureReport`.
    """

    def __init__(self, n_components: int = 10, min_cluster_size: int = 10,
                 min_samples: Optional[int] = None, fallback: str = "gmm", max_k: int = 8,
                 structure: bool = True, random_state: int = 0, n_threads: int = 1):
        self.n_components = n_components
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.fallback = fallback
        self.max_k = max_k
        self.structure = structure
        self.random_state = random_state
        self.n_threads = n_threads

    # -- pipeline ---------------------------------------------------------
    def transform(self, predictions) -> np.ndarray:
        """Embed predictions (scaler + PCA fitted on the SGD solutions)."""
        X = _flatten(predictions)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        return self.pca_.transform(self.scaler_.transform(X))

    def fit(self, predictions, y=None):
        # Small dense problems: BLAS/OpenMP thread pools only oversubscribe the
        # CPU (measured 20-100x slowdowns on a loaded 2-core machine).
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.n_threads):
            return self._fit(predictions)

    def _fit(self, predictions):
        import hdbscan

        X = _flatten(predictions)
        n, d = X.shape
        if n < 3:
            raise ValueError("need at least 3 solutions to cluster")
        if self.fallback not in ("gmm", "none"):
            raise ValueError("fallback must be 'gmm' or 'none'")
        self.n_features_in_ = d
        notes: list = []
        self.scaler_ = StandardScaler().fit(X)
        nc = int(min(self.n_components, n, d))
        if nc < self.n_components:
            notes.append(f"PCA components capped at {nc} (n_samples={n}, n_features={d})")
        self.pca_ = PCA(n_components=nc, random_state=self.random_state).fit(self.scaler_.transform(X))
        Z = self.pca_.transform(self.scaler_.transform(X))
        self.embedding_ = Z
        self.n_components_ = nc

        mcs = int(max(2, min(self.min_cluster_size, n)))
        ms = None if self.min_samples is None else int(max(1, min(self.min_samples, n - 1)))
        self.hdbscan_ = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms,
                                        prediction_data=True).fit(Z)
        hl = np.asarray(self.hdbscan_.labels_, dtype=int)
        self.hdbscan_labels_ = hl
        n_hdb = int(len(set(hl.tolist()) - {NOISE}))
        self.gmm_ = None
        if n_hdb >= 2:
            self.partition_kind_ = "hdbscan"
            self.partition_label_ = HDBSCAN_LABEL
            labels = hl
            self.categories_ = list(range(n_hdb)) + [NOISE]
        elif self.fallback == "gmm":
            what = "all noise" if n_hdb == 0 else "a single cluster"
            notes.append(f"HDBSCAN found {what}: fallback to a Gaussian mixture with BIC-chosen k >= 2 "
                         f"({FALLBACK_LABEL})")
            ks = [k for k in range(2, max(2, self.max_k) + 1) if k < n]
            bics = {k: self._gmm(k).fit(Z).bic(Z) for k in ks}
            kbest = min(bics, key=bics.get)
            self.gmm_ = self._gmm(kbest).fit(Z)
            self.fallback_bic_ = bics
            labels = self._relabel_gmm(self.gmm_.predict(Z), kbest, fit=True)
            self.partition_kind_ = "gmm_fallback"
            self.partition_label_ = FALLBACK_LABEL
            self.categories_ = list(range(kbest))
        else:
            notes.append(f"HDBSCAN found {n_hdb} cluster(s); fallback disabled — degenerate partition "
                         f"({FALLBACK_LABEL})")
            self.partition_kind_ = "hdbscan_degenerate"
            self.partition_label_ = FALLBACK_LABEL
            labels = hl
            self.categories_ = list(range(n_hdb)) + [NOISE]
        self.labels_ = labels
        self.category_names_ = category_names(self.categories_)
        self.centroids_ = self._centroids(Z, labels)
        self._notes = notes
        if self.structure:
            self.structure_ = self._structure(Z, hl, n_hdb, notes)
        return self

    def _gmm(self, k):
        return GaussianMixture(n_components=k, covariance_type="full", n_init=2, reg_covar=1e-6,
                               random_state=self.random_state)

    def _relabel_gmm(self, lab, k, fit=False):
        # order GMM components by size in the fitted data (largest = 0) for stable naming
        if fit:
            sizes = np.bincount(lab, minlength=k)
            order = np.argsort(-sizes, kind="stable")
            self._gmm_map = np.empty(k, dtype=int)
            self._gmm_map[order] = np.arange(k)
        return self._gmm_map[lab]

    def _centroids(self, Z, labels):
        C = np.full((len(self.categories_), Z.shape[1]), np.nan)
        for i, c in enumerate(self.categories_):
            m = labels == c
            if m.any():
                C[i] = Z[m].mean(0)
        return C

    def pooled_centroids(self, *predictions_and_labels) -> np.ndarray:
        """Centroids per category pooled over the fitted solutions and extra
        (predictions, labels) pairs, e.g. SGLD samples — fills categories (such
        as noise) that have no fitted member."""
        Zs, Ls = [self.embedding_], [self.labels_]
        for preds, lab in predictions_and_labels:
            Zs.append(self.transform(preds))
            Ls.append(np.asarray(lab))
        return self._centroids(np.vstack(Zs), np.concatenate(Ls))

    def predict(self, predictions) -> np.ndarray:
        """Assign new solutions (e.g. SGLD samples) to the fitted partition:
        ``hdbscan.approximate_predict`` (noise -> -1) or ``gmm.predict``."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.n_threads):
            return self._predict(predictions)

    def _predict(self, predictions) -> np.ndarray:
        import hdbscan

        Z = self.transform(predictions)
        if self.partition_kind_ == "gmm_fallback":
            return self._relabel_gmm(self.gmm_.predict(Z), len(self.categories_))
        if len(self.categories_) <= 1:  # HDBSCAN found nothing: everything is noise
            return np.full(Z.shape[0], NOISE, dtype=int)
        lab, _ = hdbscan.approximate_predict(self.hdbscan_, Z)
        return np.asarray(lab, dtype=int)

    def fit_predict(self, predictions, y=None):
        return self.fit(predictions).labels_

    def counts(self, labels) -> np.ndarray:
        """Counts over ``categories_`` (noise included, zero cells kept)."""
        return category_counts(labels, self.categories_)

    def cluster_table(self, labels, **per_run_columns) -> pd.DataFrame:
        return cluster_table(labels, categories=self.categories_, **per_run_columns)

    # -- structure -----------------------------------------------------------
    def _structure(self, Z, hl, n_hdb, notes):
        from hdbscan.validity import validity_index

        n = Z.shape[0]
        notes = list(notes)
        if n_hdb >= 2:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    vi = float(validity_index(np.ascontiguousarray(Z, dtype=np.float64), hl))
                if not np.isfinite(vi):
                    notes.append("validity index numerically undefined (NaN/inf from hdbscan); reported as NaN")
                    vi = float("nan")
            except Exception as e:  # duplicates / tiny clusters break DBCV
                notes.append(f"validity index failed ({type(e).__name__}: {e}); reported as NaN")
                vi = float("nan")
        else:
            vi = float("nan")
            notes.append("validity index undefined: HDBSCAN found fewer than two clusters (NaN)")
        bic = {}
        for k in range(1, self.max_k + 1):
            if k >= n:
                break
            bic[k] = float(self._gmm(k).fit(Z).bic(Z))
        best_k = int(min(bic, key=bic.get))
        sil = {}
        for k in range(2, self.max_k + 1):
            if k >= n:
                break
            km = KMeans(n_clusters=k, n_init=4, random_state=self.random_state).fit(Z)
            if len(np.unique(km.labels_)) < 2:
                continue
            sil[k] = float(silhouette_score(Z, km.labels_))
        if sil:
            sk = int(max(sil, key=sil.get))
            sv = sil[sk]
        else:
            sk, sv = None, float("nan")
            notes.append("silhouette undefined (too few samples)")
        return StructureReport(
            n_samples=n, n_components=self.n_components_,
            explained_variance=float(self.pca_.explained_variance_ratio_.sum()),
            hdbscan_n_clusters=n_hdb, hdbscan_noise_fraction=float(np.mean(hl == NOISE)),
            validity_index=vi, gmm_bic=bic, gmm_best_k=best_k, silhouette=sil,
            silhouette_best_k=sk, silhouette_best=sv, partition_kind=self.partition_kind_,
            partition_label=self.partition_label_, n_partition_clusters=len(set(self.categories_) - {NOISE}),
            min_cluster_size=int(max(2, min(self.min_cluster_size, n))), min_samples=self.min_samples,
            notes=notes)


def cluster_table(labels, categories: Optional[Sequence] = None, **per_run_columns) -> pd.DataFrame:
    """Per-cluster summary in a fixed category order.

    Columns: ``category``, ``name`` (C0.., noise), ``n`` (count), ``mass``
    (n / N), and for each keyword array (one value per run, e.g. ``loss=``,
    ``llc=``, ``alpha=``) ``mean_<name>``, ``sd_<name>`` and ``n_<name>`` (number
    of finite values used; non-finite values are excluded and counted, never
    silently averaged). Categories with no members get n = 0, mass = 0 and
    NaN means (that is what "undefined" means here).
    """
    labels = np.asarray(labels)
    if categories is None:
        u = sorted(set(labels.tolist()) - {NOISE})
        categories = u + [NOISE]
    cats = list(categories)
    counts = category_counts(labels, cats)
    N = labels.size
    df = pd.DataFrame({"category": cats, "name": category_names(cats), "n": counts,
                       "mass": counts / N if N else np.zeros(len(cats))})
    for key, vals in per_run_columns.items():
        v = np.asarray(vals, dtype=float)
        if v.shape != labels.shape:
            raise ValueError(f"column {key!r} must have one value per run")
        means, sds, ns = [], [], []
        for c in cats:
            x = v[(labels == c) & np.isfinite(v)]
            ns.append(x.size)
            means.append(x.mean() if x.size else np.nan)
            sds.append(x.std(ddof=1) if x.size > 1 else np.nan)
        df[f"mean_{key}"] = means
        df[f"sd_{key}"] = sds
        df[f"n_{key}"] = ns
    return df


def probe_inputs(x_train, grid_size: int = 20, margin: float = 0.1, max_points: Optional[int] = None,
                 rng: SeedLike = None) -> np.ndarray:
    """Probe set for function-space clustering.

    For 2-D inputs ``[n, 2]``: the training inputs followed by a ``grid_size × grid_size``
    grid over the bounding box of the training inputs enlarged by ``margin``
    (a fraction of the range on each side). For other inputs (``[n, d]``, images
    ``[n, C, H, W]``, token sequences): the training inputs, or a random subsample of
    ``max_points`` of them (drawn with ``rng``, kept in their order) when ``max_points`` is
    given. Predictions on the probe set come from
    :func:`sgdbayes.models.class_probabilities` (every class's probability, class 0 dropped).
    """
    X = np.asarray(x_train)
    if X.ndim < 2:
        raise ValueError("x_train must be [n, d] or [n, ...] (one row per example)")
    if X.ndim == 2 and X.shape[1] == 2:
        X = X.astype(float)
        lo, hi = X.min(0), X.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        lo, hi = lo - margin * span, hi + margin * span
        g0 = np.linspace(lo[0], hi[0], grid_size)
        g1 = np.linspace(lo[1], hi[1], grid_size)
        G = np.stack(np.meshgrid(g0, g1, indexing="xy"), -1).reshape(-1, 2)
        return np.vstack([X, G])
    if max_points is not None and max_points < X.shape[0]:
        idx = np.sort(as_generator(rng).choice(X.shape[0], size=max_points, replace=False))
        return X[idx]
    return X.copy()
