"""Data sets that ship offline: scikit-learn's bundled digits, iris, wine and diabetes, and two
synthetic sets for tests."""

from __future__ import annotations

import math

import numpy as np

from dlkit.data.dataset import Dataset, check_data_options, make_dataset, make_regression_dataset, value_range
from dlkit.errors import InputError


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




def _tabular(name: str, x: np.ndarray, features: list[str], ds_factory, *args) -> Dataset:
    """A tabular set standardised inside the model, with the training split's statistics (as CSVs are)."""
    ds = ds_factory(name, x.astype(np.float32), *args)
    mean = ds.x_train.mean(axis=0)
    std = ds.x_train.std(axis=0)
    std[std == 0] = 1.0
    ds.input_spec["preprocessing"] = {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}
    return ds


def _spec(x: np.ndarray, features: list[str]) -> dict:
    return {"kind": "tabular", "shape": [x.shape[1]], "dtype": "float32", "range": value_range(x),
            "features": list(features)}


def load_iris(source: str, options: dict, seed: int) -> Dataset:
    """scikit-learn's bundled iris: 150 flowers, 4 measurements, 3 species."""
    from sklearn.datasets import load_iris as sk_iris

    check_data_options("iris", options)
    b = sk_iris()
    return _tabular("iris", b.data, b.feature_names, make_dataset, b.target, list(b.target_names),
                    _spec(b.data, b.feature_names), seed, options)


def load_wine(source: str, options: dict, seed: int) -> Dataset:
    """scikit-learn's bundled UCI wine: 178 wines, 13 chemical measurements, 3 cultivars."""
    from sklearn.datasets import load_wine as sk_wine

    check_data_options("wine", options)
    b = sk_wine()
    return _tabular("wine", b.data, b.feature_names, make_dataset, b.target, list(b.target_names),
                    _spec(b.data, b.feature_names), seed, options)


def load_diabetes(source: str, options: dict, seed: int) -> Dataset:
    """scikit-learn's bundled diabetes data: 442 patients, 10 baseline measurements, and a number
    to predict (disease progression one year later): a regression set."""
    from sklearn.datasets import load_diabetes as sk_diabetes

    check_data_options("diabetes", options)
    if options.get("targets", "values") != "values":
        raise InputError("diabetes: its target is a number (regression), not a class label")
    b = sk_diabetes(scaled=False)
    opts = {k: v for k, v in options.items() if k != "targets"}
    return _tabular("diabetes", b.data, b.feature_names, make_regression_dataset, b.target, ["progression"],
                    _spec(b.data, b.feature_names), seed, opts)
