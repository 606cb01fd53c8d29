"""k-means on the autoencoder's embeddings (scikit-learn's KMeans, seeded, several inits), and
the choice of K for ``clusters=auto``: the best silhouette on the validation embeddings."""

from __future__ import annotations

import sys

import numpy as np

from dlkit import InputError

AUTO_RANGE = (2, 10)  # clusters=auto tries K in this range (and below the number of rows)
AUTO_MIN_ROWS = 10


def check_clusters(clusters, rows: int, train_rows: int, source: str) -> None:
    """Refuse a K no k-means can fit, before any training: one line naming the value."""
    if clusters is None or clusters == "auto":
        if rows < AUTO_MIN_ROWS:
            raise InputError(f"{source}: clusters=auto needs at least {AUTO_MIN_ROWS} rows to compare "
                             f"silhouettes, the file has {rows}; set clusters=K")
        return
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
        raise InputError(f"model.clusters must be auto or a whole number >= 2, got {clusters!r}")
    if clusters > train_rows:
        raise InputError(f"{source}: clusters={clusters} is larger than the {rows} rows "
                         f"({train_rows} in the training split)")


def fit_kmeans(z: np.ndarray, k: int, seed: int, n_init: int):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z.astype(np.float64))


def choose_k(z_train: np.ndarray, z_val: np.ndarray, seed: int, n_init: int, quiet: bool) -> int:
    """The K in :data:`AUTO_RANGE` whose k-means (on the training embeddings) has the best
    silhouette on the validation embeddings (the training ones when there are too few); printed."""
    from sklearn.metrics import silhouette_score

    held_out = z_val if len(z_val) > AUTO_RANGE[1] else z_train
    high = min(AUTO_RANGE[1], len(z_train) - 1, len(held_out) - 1)
    scores = {}
    for k in range(AUTO_RANGE[0], max(AUTO_RANGE[0], high) + 1):
        labels = fit_kmeans(z_train, k, seed, n_init).predict(held_out.astype(np.float64))
        scores[k] = float(silhouette_score(held_out, labels)) if 1 < len(set(labels)) < len(held_out) else -1.0
    best = max(scores, key=lambda k: (scores[k], -k))
    if not quiet:
        shown = ", ".join(f"K={k} {s:.3f}" for k, s in scores.items())
        print(f"dlkit: clusters=auto: silhouette of the validation embeddings {shown} -> K={best}", file=sys.stderr)
    return best
