"""The in-memory Dataset of numpy splits, deterministic splitting (stratified for classes), and option checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlkit.data.streaming import take_rows
from dlkit.errors import InputError


@dataclass
class Dataset:
    """A data set split three ways, with what a model needs to know about its inputs."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_spec: dict
    labels: list[str]
    source: dict = field(default_factory=dict)
    # Numeric targets (for regression): {"names", "mean", "std"}, the statistics of the training
    # split; None for class labels.
    target_spec: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """The width of the model's output: one logit per class, or one value per target."""
        return len(self.target_spec["names"]) if self.target_spec else len(self.labels)

    @property
    def targets(self) -> str:
        """``labels`` (class indices), ``values`` (numbers) or ``none`` (``data.targets=none``: ``y``
        is -1 for every sample): what ``y`` holds."""
        if self.target_spec:
            return "values"
        return "labels" if self.labels else "none"

    @property
    def kind(self) -> str:
        return self.input_spec["kind"]

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """``train``, ``val`` or ``test`` as (x, y)."""
        if which not in ("train", "val", "test"):
            raise InputError(f"unknown split {which!r}: expected train, val or test")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def describe(self) -> dict:
        """What meta.json records: how to load the same data again, and its sizes."""
        return {
            **self.source,
            "sizes": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
        }


def check_finite(ds: Dataset, source: str) -> None:
    for part in ("train", "val", "test"):
        x, _ = ds.split(part)
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            idx = np.argwhere(~np.isfinite(x))[0]
            raise InputError(f"{source}: non-finite value (NaN or inf) in the {part} split "
                             f"at {tuple(int(i) for i in idx)}")


def split_stratified(x: np.ndarray, y: np.ndarray, seed: int, val: float = 0.1, test: float = 0.2,
                     name: str = "data") -> tuple[np.ndarray, ...]:
    """Split into train/val/test keeping class proportions, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test))
        n_val = int(round(len(idx) * val))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    out = []
    for chunks in parts:
        idx = np.concatenate(chunks) if chunks else np.array([], dtype=int)
        rng.shuffle(idx)
        out += [take_rows(x, idx), y[idx]]
    if min(len(out[1]), len(out[3]), len(out[5])) == 0:
        raise InputError(f"{name}: too few samples ({len(y)}) to split into train, validation and test")
    return tuple(out)


def stratified_sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` samples drawn without replacement, shuffled from ``seed``, each class
    (integer labels) represented in proportion (largest remainders), so a small sample is not
    the first classes of a sorted file; targets that are not class labels are sampled uniformly."""
    rng = np.random.default_rng(seed)
    n = min(int(n), len(y))
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        return np.sort(rng.permutation(len(y))[:n]) if n < len(y) else np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    share = counts / counts.sum() * n
    take = np.floor(share).astype(int)
    for i in np.argsort(-(share - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = []
    for cls, k in zip(classes, take):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        chosen.append(idx[:k])
    out = np.concatenate(chosen)
    rng.shuffle(out)
    return out


def make_dataset(name: str, x: np.ndarray, y: np.ndarray, labels: list[str], input_spec: dict,
                 seed: int, options: dict) -> Dataset:
    """Split arrays into a :class:`Dataset` (``options`` may set ``val`` and ``test`` fractions;
    ``targets=none`` drops the labels)."""
    if options.get("targets") == "none":
        from dlkit.data.unlabelled import make_unlabelled_dataset

        return make_unlabelled_dataset(name, x, input_spec, seed, options)
    if options.get("targets", "labels") != "labels":
        raise InputError(f"{name}: has class labels, not numeric targets (regression needs numbers: "
                         f"a CSV column with data.target, or an .npz whose y holds values)")
    if len(np.unique(y)) < 2:
        raise InputError(f"{name}: needs at least 2 classes, found {len(np.unique(y))}")
    val = _fraction(options, "val", 0.1)
    test = _fraction(options, "test", 0.2)
    parts = split_stratified(x, y.astype(np.int64), seed, val, test, name)
    return Dataset(name, *parts, input_spec=input_spec, labels=labels)


def make_regression_dataset(name: str, x: np.ndarray, y: np.ndarray, target_names: list[str], input_spec: dict,
                            seed: int, options: dict) -> Dataset:
    """Split arrays with numeric targets (``y``: ``[N]`` or ``[N, targets]``) into a regression
    :class:`Dataset`: a seeded random split, and the training split's target statistics, with
    which the model standardises its targets for the loss (see ``dlkit.tasks.regression``)."""
    y = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
    if not np.isfinite(y).all():
        row = int(np.argwhere(~np.isfinite(y))[0][0])
        raise InputError(f"{name}: target of sample {row} is not a finite number")
    val = _fraction(options, "val", 0.1)
    test = _fraction(options, "test", 0.2)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = int(round(len(y) * test)), int(round(len(y) * val))
    if min(n_test, n_val, len(y) - n_test - n_val) < 1:
        raise InputError(f"{name}: too few samples ({len(y)}) to split into train, validation and test")
    parts = (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test])
    train_y = y[parts[0]]
    std = train_y.std(axis=0)
    spec = {"names": list(target_names),
            "mean": [float(v) for v in train_y.mean(axis=0)], "std": [float(v) if v > 0 else 1.0 for v in std]}
    arrays = [a for idx in parts for a in (take_rows(x, idx), y[idx])]
    return Dataset(name, *arrays, input_spec=input_spec, labels=[], target_spec=spec)


def check_data_options(name: str, options: dict, known: tuple[str, ...] = ()) -> None:
    """Refuse a ``data.KEY`` the loader does not read (a misspelt ``data.target`` would otherwise
    be ignored silently); ``val``, ``test`` and ``targets`` (``labels`` or ``values``, set from the
    recipe's task, or ``none``: no targets at all, for tasks that need none) are read by every loader."""
    allowed = {*known, "val", "test", "targets"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"{name}: unknown data option data.{unknown[0]} (known: {', '.join(sorted(allowed))})")


def _fraction(options: dict, key: str, default: float) -> float:
    value = options.get(key, default)
    if not isinstance(value, (int, float)) or not 0 < value < 0.5:
        raise InputError(f"data.{key} must be a fraction between 0 and 0.5, got {value!r}")
    return float(value)


def value_range(x: np.ndarray) -> list[float]:
    return [float(np.min(x)), float(np.max(x))] if x.size else [0.0, 0.0]


def is_number(cell: str) -> bool:
    """Whether a CSV cell parses as a float."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _sorted_labels(values: list) -> list[str]:
    labels = sorted({str(v) for v in values}, key=lambda s: (not is_number(s), float(s) if is_number(s) else 0, s))
    return labels
