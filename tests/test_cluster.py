"""Function-space clustering (sgdbayes.stats.cluster)."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from sgdbayes.stats.cluster import (
    FALLBACK_LABEL,
    NOISE,
    FunctionSpaceClusterer,
    cluster_table,
    probe_inputs,
)


def _blobs(rng, sizes=(100, 60, 40), n_probe=30, n_out=2, spread=0.3, centers=None):
    if centers is None:
        centers = rng.normal(size=(len(sizes), n_probe, n_out)) * 3
    y = np.repeat(np.arange(len(sizes)), sizes)
    X = centers[y] + rng.normal(size=(y.size, n_probe, n_out)) * spread
    return X, y, centers


@pytest.fixture(scope="module")
def blob_fit():
    rng = np.random.default_rng(0)
    X, y, centers = _blobs(rng)
    clf = FunctionSpaceClusterer(n_components=5, min_cluster_size=10, random_state=0).fit(X)
    return clf, X, y, centers, rng


def test_recovers_three_blobs(blob_fit):
    clf, X, y, *_ = blob_fit
    assert clf.partition_kind_ == "hdbscan"
    assert adjusted_rand_score(y, clf.labels_) >= 0.9
    assert clf.categories_ == [0, 1, 2, NOISE]
    assert clf.category_names_ == ["C0", "C1", "C2", "noise"]
    assert clf.centroids_.shape == (4, 5)
    s = clf.structure_
    assert s.hdbscan_n_clusters == 3 and s.separated_basins
    assert s.validity_index > 0.5 and s.gmm_best_k == 3 and s.silhouette_best_k == 3
    assert "HDBSCAN" in s.summary() and len(s.to_frame()) > 10


def test_predict_new_points_into_right_clusters(blob_fit):
    clf, X, y, centers, _ = blob_fit
    rng = np.random.default_rng(7)
    y_new = np.repeat([0, 1, 2], 15)
    X_new = centers[y_new] + rng.normal(size=(45,) + centers.shape[1:]) * 0.3
    pred = clf.predict(X_new)
    # map each true blob to the cluster that holds it in the fit
    mapping = {t: np.bincount(clf.labels_[y == t][clf.labels_[y == t] >= 0]).argmax() for t in range(3)}
    assert np.mean(pred == np.array([mapping[t] for t in y_new])) >= 0.95
    # far-away points are noise, and noise is counted, not dropped
    far = np.full((3,) + centers.shape[1:], 40.0)
    pf = clf.predict(far)
    assert np.all(pf == NOISE)
    counts = clf.counts(np.concatenate([pred, pf]))
    assert counts.sum() == 48 and counts[-1] >= 3


def test_noise_kept_as_category():
    rng = np.random.default_rng(1)
    X, y, _ = _blobs(rng, sizes=(60, 60))
    outliers = rng.uniform(-30, 30, size=(6,) + X.shape[1:])
    Xa = np.concatenate([X, outliers])
    clf = FunctionSpaceClusterer(n_components=5, min_cluster_size=10).fit(Xa)
    assert clf.partition_kind_ == "hdbscan"
    assert NOISE in clf.categories_
    c = clf.counts(clf.labels_)
    assert c.sum() == Xa.shape[0]  # nothing dropped
    assert c[clf.categories_.index(NOISE)] >= 1
    tab = clf.cluster_table(clf.labels_, loss=np.arange(Xa.shape[0], dtype=float))
    assert "noise" in list(tab["name"]) and tab["n"].sum() == Xa.shape[0]
    assert np.isfinite(clf.centroids_[clf.categories_.index(NOISE)]).all()


def test_unimodal_falls_back_to_gmm():
    rng = np.random.default_rng(2)
    U = rng.normal(size=(300, 40))
    clf = FunctionSpaceClusterer(n_components=10, min_cluster_size=10).fit(U)
    assert clf.partition_kind_ == "gmm_fallback"
    assert clf.partition_label_ == FALLBACK_LABEL == "partition without separated basins"
    assert len(clf.categories_) >= 2 and NOISE not in clf.categories_
    assert len(np.unique(clf.labels_)) >= 2
    s = clf.structure_
    assert s.hdbscan_n_clusters < 2 and not s.separated_basins
    assert np.isnan(s.validity_index) and any("validity index undefined" in n for n in s.notes)
    assert s.gmm_best_k == 1  # BIC sees one blob: reported, not hidden
    p = clf.predict(rng.normal(size=(20, 40)))
    assert set(p.tolist()) <= set(clf.categories_)
    assert clf.counts(p).sum() == 20


def test_no_fallback_degenerate_partition_does_not_crash():
    rng = np.random.default_rng(3)
    U = rng.normal(size=(200, 20))
    clf = FunctionSpaceClusterer(n_components=5, min_cluster_size=10, fallback="none").fit(U)
    assert clf.partition_kind_ == "hdbscan_degenerate"
    p = clf.predict(rng.normal(size=(5, 20)))
    assert set(p.tolist()) <= set(clf.categories_)
    assert clf.counts(clf.labels_).sum() == 200


def test_tiny_input_does_not_crash():
    rng = np.random.default_rng(4)
    clf = FunctionSpaceClusterer(n_components=10, min_cluster_size=10).fit(rng.normal(size=(4, 3)))
    assert clf.n_components_ == 3 and len(clf.labels_) == 4


def test_cluster_table_means_and_fixed_order():
    labels = np.array([0, 0, 1, -1, 1, 1])
    loss = np.array([1.0, 3.0, 2.0, 5.0, 4.0, np.nan])
    tab = cluster_table(labels, categories=[0, 1, 2, -1], loss=loss)
    assert list(tab["name"]) == ["C0", "C1", "C2", "noise"]
    assert list(tab["n"]) == [2, 3, 0, 1]
    assert np.allclose(tab["mass"], [2 / 6, 3 / 6, 0, 1 / 6])
    assert tab.loc[0, "mean_loss"] == 2.0 and tab.loc[1, "mean_loss"] == 3.0
    assert tab.loc[1, "n_loss"] == 2  # NaN excluded and counted
    assert np.isnan(tab.loc[2, "mean_loss"]) and tab.loc[3, "mean_loss"] == 5.0


def test_probe_inputs():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 2, size=(50, 2))
    P = probe_inputs(x, grid_size=20, margin=0.1)
    assert P.shape == (50 + 400, 2)
    assert np.allclose(P[:50], x)
    span = x.max(0) - x.min(0)
    assert np.allclose(P[50:].min(0), x.min(0) - 0.1 * span)
    assert np.allclose(P[50:].max(0), x.max(0) + 0.1 * span)
    x5 = rng.normal(size=(100, 5))
    assert probe_inputs(x5).shape == (100, 5)
    sub = probe_inputs(x5, max_points=30, rng=np.random.default_rng(0))
    assert sub.shape == (30, 5) and np.allclose(sub, probe_inputs(x5, max_points=30, rng=0))
