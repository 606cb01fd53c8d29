"""Data with no targets (``data.targets=none``): every column a feature, ``y`` -1 for every sample.

Tasks that learn without labels (clustering) train on it; tasks trained on targets refuse it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from dlkit.data.dataset import Dataset, _fraction, check_data_options, is_number, value_range
from dlkit.errors import InputError

NO_LABEL = -1


def make_unlabelled_dataset(name: str, x: np.ndarray, input_spec: dict, seed: int, options: dict) -> Dataset:
    """A seeded random train/val/test split of ``x`` with no labels (``y`` is :data:`NO_LABEL`)."""
    val = _fraction(options, "val", 0.1)
    test = _fraction(options, "test", 0.2)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test, n_val = int(round(len(x) * test)), int(round(len(x) * val))
    if min(n_test, n_val, len(x) - n_test - n_val) < 1:
        raise InputError(f"{name}: too few samples ({len(x)}) to split into train, validation and test")
    parts = (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test])
    arrays = [a for idx in parts for a in (x[idx], np.full(len(idx), NO_LABEL, np.int64))]
    return Dataset(name, *arrays, input_spec=input_spec, labels=[])


def load_csv_unlabelled(path: Path, options: dict, seed: int) -> Dataset:
    """A CSV whose every column is a numeric feature (a header row is detected), standardised
    inside the model like any CSV's features."""
    check_data_options(str(path), options)
    try:
        with open(path, newline="") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    if not rows:
        raise InputError(f"{path}: empty CSV file")
    has_header = not all(is_number(c) for c in rows[0][1])
    header = [c.strip() for c in rows[0][1]] if has_header else [f"column {i + 1}" for i in range(len(rows[0][1]))]
    body = rows[1:] if has_header else rows
    if not body:
        raise InputError(f"{path}: no data rows")
    if not any(is_number(row[c]) for _, row in body for c in range(min(len(row), len(header)))):
        raise InputError(f"{path}: no numeric column (data.targets=none reads every column as a number)")
    feats = []
    for line, row in body:
        if len(row) != len(header):
            raise InputError(f"{path}:{line}: expected {len(header)} columns, found {len(row)}")
        values = []
        for col, cell in enumerate(row):
            value = float(cell) if is_number(cell) else None
            if value is None or not math.isfinite(value):
                raise InputError(f"{path}:{line}: column {col + 1} ({header[col]!r}) is not a finite number: "
                                 f"{cell.strip()!r}")
            values.append(value)
        feats.append(values)
    x = np.asarray(feats, dtype=np.float32)
    spec = {"kind": "tabular", "shape": [x.shape[1]], "dtype": "float32", "range": value_range(x),
            "features": header}
    ds = make_unlabelled_dataset(path.name, x, spec, seed, options)
    mean = ds.x_train.mean(axis=0)
    std = ds.x_train.std(axis=0)
    std[std == 0] = 1.0
    ds.input_spec["preprocessing"] = {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}
    return ds
