"""EcoVal's clusters: k-means per class (or over all rows), and the nearest centroid of new points."""

from __future__ import annotations

import numpy as np


def cluster_rows(
    feats: np.ndarray, y: np.ndarray, num_classes: int, n_clusters: int | None, per_class: bool, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means (scikit-learn, ``n_init=3``) of the rows, per class or over all rows.

    The total ``n_clusters`` (default ``max(num_classes, round(N / 20))``) is shared among classes
    in proportion to their sizes, at least one per class.

    Returns:
        ``(cluster, centroids, centroid_class)``: each row's cluster id ``0..K-1``, the ``(K, d)``
        centroids, and each centroid's class (-1 when not clustering per class).

    Example:
        >>> f = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> cluster, centroids, cls = cluster_rows(f, np.array([0, 0, 1, 1]), 2, 2, True, 0)
        >>> cluster.tolist(), cls.tolist()
        ([0, 0, 1, 1], [0, 1])
    """
    from sklearn.cluster import KMeans

    n = feats.shape[0]
    total = n_clusters or max(num_classes, round(n / 20))
    groups = [np.flatnonzero(y == c) for c in range(num_classes)] if per_class else [np.arange(n)]
    groups = [g for g in groups if g.size]
    cluster = np.empty(n, dtype=np.int64)
    centroids, centroid_class = [], []
    for g in groups:
        k = total if not per_class else max(1, round(total * g.size / n))
        k = min(k, g.size)
        if k == 1:
            labels, centers = np.zeros(g.size, dtype=np.int64), feats[g].mean(0, keepdims=True)
        else:
            km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(feats[g].astype(np.float64))
            labels, centers = km.labels_.astype(np.int64), km.cluster_centers_
        # k-means may leave a cluster empty on degenerate data (duplicates): renumber the used ones
        used, labels = np.unique(labels, return_inverse=True)
        cluster[g] = labels + len(centroids)
        for j in used:
            centroids.append(centers[j])
            centroid_class.append(int(y[g[0]]) if per_class else -1)
    return cluster, np.stack(centroids), np.asarray(centroid_class)


def nearest_centroid(
    feats: np.ndarray, y: np.ndarray, centroids: np.ndarray, centroid_class: np.ndarray, per_class: bool
) -> np.ndarray:
    """Index of each row's nearest centroid (among its class's centroids when ``per_class``).

    Example:
        >>> c = np.array([[0.0], [5.0]])
        >>> nearest_centroid(np.array([[4.0], [4.0]]), np.array([0, 1]), c, np.array([0, 1]), True).tolist()
        [0, 1]
    """
    k, dim = centroids.shape
    step = max(1, (1 << 24) // (k * dim))  # rows per block: bounds the (rows, K, d) differences
    out = np.empty(feats.shape[0], dtype=np.int64)
    for start in range(0, feats.shape[0], step):
        block = feats[start : start + step].astype(np.float64)
        d = ((block[:, None, :] - centroids[None]) ** 2).sum(-1)
        if per_class:
            d = np.where(centroid_class[None, :] == y[start : start + step, None], d, np.inf)
        out[start : start + step] = np.argmin(d, axis=1)
    return out
