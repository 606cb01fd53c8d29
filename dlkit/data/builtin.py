"""Data sets that ship offline: scikit-learn's bundled digits, and two synthetic sets for tests."""

from __future__ import annotations

import math

import numpy as np
from dlkit.data.dataset import Dataset, check_data_options, make_dataset, value_range




# -- built-in data sets ----------------------------------------------------------------------------
def load_digits(source: str, options: dict, seed: int) -> Dataset:
    """scikit-learn's bundled UCI digits: 1,797 8x8 grayscale images, 10 classes, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    check_data_options("digits", options)
    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    spec = {"kind": "image", "shape": [1, 8, 8], "dtype": "float32", "range": [0.0, 1.0],
            "layout": "NCHW", "preprocessing": "pixel / 16 (sklearn digits are 0..16)"}
    return make_dataset("digits", x, bunch.target, [str(i) for i in range(10)], spec, seed, options)


def load_blobs(source: str, options: dict, seed: int) -> Dataset:
    """Synthetic separable tabular data (3 classes, 8 features) for fast tests."""
    check_data_options("blobs", options, ("n",))
    rng = np.random.default_rng(1234)
    n, classes, features = int(options.get("n", 300)), 3, 8
    centres = rng.normal(0, 3, size=(classes, features))
    y = np.arange(n) % classes
    x = (centres[y] + rng.normal(0, 1, size=(n, features))).astype(np.float32)
    spec = {"kind": "tabular", "shape": [features], "dtype": "float32", "range": value_range(x)}
    return make_dataset("blobs", x, y, ["a", "b", "c"], spec, seed, options)


def load_waves(source: str, options: dict, seed: int) -> Dataset:
    """Synthetic sequences (16 steps, 2 features): which of 3 frequencies a noisy sine has."""
    check_data_options("waves", options, ("n",))
    rng = np.random.default_rng(4321)
    n, steps = int(options.get("n", 300)), 16
    y = np.arange(n) % 3
    t = np.arange(steps)[None, :]
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1))
    base = np.sin((y[:, None] + 1) * 0.4 * t + phase)
    x = np.stack([base, np.cos((y[:, None] + 1) * 0.4 * t + phase)], axis=-1)
    x = (x + rng.normal(0, 0.2, size=x.shape)).astype(np.float32)
    spec = {"kind": "sequence", "shape": [steps, 2], "dtype": "float32", "range": value_range(x)}
    return make_dataset("waves", x, y, ["slow", "medium", "fast"], spec, seed, options)


