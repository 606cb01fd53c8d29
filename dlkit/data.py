"""Data sets: in-memory splits, the loader registry lookup, and readers for user files.

Every loader returns a :class:`Dataset` of numpy arrays already split into train, validation
and test parts (stratified, from ``seed``), with an ``input_spec`` that says what one sample
looks like. The data sets dlkit targets fit in memory; keeping them as arrays makes the training
loop a few tensor slices per step instead of a DataLoader.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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

    @property
    def num_classes(self) -> int:
        return len(self.labels)

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


def load_dataset(source: str, options: dict | None = None, seed: int = 0) -> Dataset:
    """Load ``source``: a registered data set name, or a path a registered loader reads."""
    from .plugins import get_registry

    registry = get_registry()
    options = dict(options or {})
    names = registry.names("dataset")
    if source in names:
        spec = registry.dataset(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(
                f"--data {source!r}: no such file or folder, and not a registered data set ({', '.join(names)})"
            )
        candidates = [
            s for s in registry.all("dataset")
            if (s.directory and path.is_dir()) or (path.is_file() and path.suffix.lower() in s.suffixes)
        ]
        if not candidates:
            raise InputError(f"--data {source}: no loader reads {'folders' if path.is_dir() else repr(path.suffix)} files")
        spec = candidates[0]
    ds = spec.load(source, options, seed)
    ds.source = {"source": source if source in names else str(Path(source).resolve()),
                 "loader": spec.name, "options": options, "seed": seed}
    check_finite(ds, source)
    return ds


def check_finite(ds: Dataset, source: str) -> None:
    for part in ("train", "val", "test"):
        x, _ = ds.split(part)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            idx = np.argwhere(~np.isfinite(x))[0]
            raise InputError(f"{source}: non-finite value (NaN or inf) in the {part} split at {tuple(int(i) for i in idx)}")


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
        out += [x[idx], y[idx]]
    if min(len(out[1]), len(out[3]), len(out[5])) == 0:
        raise InputError(f"{name}: too few samples ({len(y)}) to split into train, validation and test")
    return tuple(out)


def make_dataset(name: str, x: np.ndarray, y: np.ndarray, labels: list[str], input_spec: dict,
                 seed: int, options: dict) -> Dataset:
    """Split arrays into a :class:`Dataset` (``options`` may set ``val`` and ``test`` fractions)."""
    if len(np.unique(y)) < 2:
        raise InputError(f"{name}: needs at least 2 classes, found {len(np.unique(y))}")
    val = _fraction(options, "val", 0.1)
    test = _fraction(options, "test", 0.2)
    parts = split_stratified(x, y.astype(np.int64), seed, val, test, name)
    return Dataset(name, *parts, input_spec=input_spec, labels=labels)


def check_data_options(name: str, options: dict, known: tuple[str, ...] = ()) -> None:
    """Refuse a ``data.KEY`` the loader does not read (a misspelt ``data.target`` would otherwise
    be ignored silently); ``val`` and ``test`` are read by every loader."""
    allowed = {*known, "val", "test"}
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


# -- user files ------------------------------------------------------------------------------------
def load_csv(source: str, options: dict, seed: int) -> Dataset:
    """Numeric features and one label column (``data.target``, default the last); header detected.

    Features are standardised with the training split's mean and standard deviation, recorded
    in the input spec so the exported graph accepts raw feature values.
    """
    path = Path(source)
    check_data_options(str(path), options, ("target",))
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f)]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty CSV file")
    first = rows[0][1]
    # A header is a first row with a word where the next row has a number (as csv.Sniffer
    # judges it): a header-less file with string labels ("5.1,3.5,setosa") keeps its first row.
    if len(rows) > 1:
        has_header = any(not is_number(a) and is_number(b) for a, b in zip(first, rows[1][1]))
    else:
        has_header = not all(is_number(c) for c in first)
    header = [c.strip() for c in first] if has_header else [f"column {i + 1}" for i in range(len(first))]
    body = rows[1:] if has_header else rows
    target = options.get("target")
    if target is None:
        t = len(header) - 1
    elif isinstance(target, int) or str(target).lstrip("-").isdigit():
        t = int(target)
        if not -len(header) <= t < len(header):
            raise InputError(f"{path}: data.target={target} is out of range ({len(header)} columns)")
        t %= len(header)
    elif target in header:
        t = header.index(target)
    else:
        raise InputError(f"{path}: data.target={target!r} is not a column (columns: {', '.join(header)})")
    feats, labels = [], []
    for line, row in body:
        if len(row) != len(header):
            raise InputError(f"{path}:{line}: expected {len(header)} columns, found {len(row)}")
        values = []
        for col, cell in enumerate(row):
            if col == t:
                continue
            try:
                values.append(float(cell))
            except ValueError:
                raise InputError(
                    f"{path}:{line}: column {col + 1} ({header[col]!r}) is not a number: {cell.strip()!r}"
                ) from None
            if not math.isfinite(values[-1]):
                raise InputError(f"{path}:{line}: column {col + 1} ({header[col]!r}) is {cell.strip()!r}")
        feats.append(values)
        labels.append(row[t].strip())
    if not feats:
        raise InputError(f"{path}: no data rows")
    x = np.asarray(feats, dtype=np.float32)
    names = _sorted_labels(labels)
    y = np.array([names.index(v) for v in labels])
    spec = {"kind": "tabular", "shape": [x.shape[1]], "dtype": "float32", "range": value_range(x),
            "features": [h for i, h in enumerate(header) if i != t]}
    ds = make_dataset(path.name, x, y, names, spec, seed, options)
    mean = ds.x_train.mean(axis=0)
    std = ds.x_train.std(axis=0)
    std[std == 0] = 1.0
    ds.input_spec["preprocessing"] = {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}
    return ds


def load_npz(source: str, options: dict, seed: int) -> Dataset:
    """An ``.npz`` with arrays ``x`` (N, ...) and integer ``y`` (N,).

    ``x`` of shape (N, F) is tabular, (N, T, F) a sequence (``data.kind=image`` reads it as
    single-channel images), (N, C, H, W) images.
    """
    path = Path(source)
    check_data_options(str(path), options, ("kind",))
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise InputError(f"{path}: missing array(s) {', '.join(sorted(missing))} (has: {', '.join(npz.files)})")
            x, y = npz["x"], npz["y"]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    if x.dtype.kind not in "fiub":
        raise InputError(f"{path}: x has dtype {x.dtype}, expected numbers")
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"{path}: y must have shape ({len(x)},), got {y.shape}")
    x = x.astype(np.float32)
    kind = options.get("kind") or {2: "tabular", 3: "sequence", 4: "image"}.get(x.ndim)
    if kind == "image" and x.ndim == 3:
        x = x[:, None]
    if kind is None or (kind == "image" and x.ndim != 4):
        raise InputError(f"{path}: x has shape {x.shape}; expected (N, F), (N, T, F) or (N, C, H, W)")
    names = _sorted_labels(y.tolist())
    y_idx = np.array([names.index(str(v)) for v in y.tolist()])
    spec = {"kind": kind, "shape": list(x.shape[1:]), "dtype": "float32", "range": value_range(x)}
    if kind == "image":
        spec["layout"] = "NCHW"
    return make_dataset(path.name, x, y_idx, names, spec, seed, options)


def load_image_folder(source: str, options: dict, seed: int) -> Dataset:
    """One sub-folder per class of PNG/JPEG images; grayscale unless any image has colour.

    Images are resized to ``data.size`` (``"28x28"``), default the most common size, and scaled
    to [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(source)
    check_data_options(str(root), options, ("size",))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c: sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    files = {c: fs for c, fs in files.items() if fs}
    if len(files) < 2:
        raise InputError(
            f"{root}: an image folder needs one sub-folder per class with at least 2 classes, found {len(files)}"
        )
    images, y = [], []
    for label, (cls, paths) in enumerate(files.items()):
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.load()
                    images.append(im.copy())
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise InputError(f"{p}: cannot decode image ({exc})") from None
            y.append(label)
    color = any(im.mode not in ("L", "1", "I", "I;16", "LA") for im in images)
    if "size" in options:
        size = parse_size(options["size"])
    else:
        sizes = [im.size for im in images]
        size = max(set(sizes), key=sizes.count)
    mode = "RGB" if color else "L"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(a.transpose(2, 0, 1) if color else a[None])
    x = np.stack(arrays)
    spec = {"kind": "image", "shape": list(x.shape[1:]), "dtype": "float32", "range": [0.0, 1.0],
            "layout": "NCHW", "preprocessing": f"{mode} image resized to {size[0]}x{size[1]}, pixel / 255"}
    return make_dataset(root.name, x, np.array(y), list(files), spec, seed, options)


def parse_size(value: Any) -> tuple[int, int]:
    """``"28x28"``, ``28`` or ``[28, 28]`` -> (width, height)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    w, sep, h = str(value).lower().partition("x")
    if sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0:
        return int(w), int(h)
    raise InputError(f"data.size must look like 28x28, got {value!r}")


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
