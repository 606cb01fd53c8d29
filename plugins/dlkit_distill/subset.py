"""The labelled subset of a transfer set: ``n`` samples per class, drawn from the seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np


def labelled_indices(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` samples of each class (all of a smaller class), from ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        chosen.append(idx[:per_class])
    return np.sort(np.concatenate(chosen))


def labelled_only(dataset, per_class: int, seed: int):
    """``dataset`` whose training split is the labelled subset only, repeated to the training
    split's length: a from-scratch baseline then takes as many steps per epoch as the distilled
    student (one that saw 100 samples for the same epochs would be undertrained, not fairly beaten)."""
    idx = labelled_indices(dataset.y_train, per_class, seed)
    tiled = np.resize(idx, len(dataset.y_train))
    return replace(dataset, x_train=dataset.x_train[tiled], y_train=dataset.y_train[tiled])
