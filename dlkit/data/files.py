"""Loaders for user files: CSV, NumPy .npz and folders of images."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.errors import InputError
from dlkit.data.dataset import (Dataset, _sorted_labels, check_data_options, is_number, make_dataset,
                                make_regression_dataset, value_range)



IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    regression = options.get("targets") == "values"
    if (y.ndim != 1 and not (regression and y.ndim == 2)) or len(y) != len(x):
        raise InputError(f"{path}: y must have shape ({len(x)},), got {y.shape}")
    x = x.astype(np.float32)
    kind = options.get("kind") or {2: "tabular", 3: "sequence", 4: "image"}.get(x.ndim)
    if kind == "image" and x.ndim == 3:
        x = x[:, None]
    if kind is None or (kind == "image" and x.ndim != 4):
        raise InputError(f"{path}: x has shape {x.shape}; expected (N, F), (N, T, F) or (N, C, H, W)")
    spec = {"kind": kind, "shape": list(x.shape[1:]), "dtype": "float32", "range": value_range(x)}
    if kind == "image":
        spec["layout"] = "NCHW"
    if regression:
        if y.dtype.kind not in "fiub":
            raise InputError(f"{path}: y has dtype {y.dtype}; regression needs numbers")
        names = ["y"] if y.ndim == 1 else [f"y{i}" for i in range(y.shape[1])]
        return make_regression_dataset(path.name, x, y, names, spec, seed, options)
    names = _sorted_labels(y.tolist())
    y_idx = np.array([names.index(str(v)) for v in y.tolist()])
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


