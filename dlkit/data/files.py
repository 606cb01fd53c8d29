"""Loaders for user files: CSV, NumPy .npz and folders of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlkit.data.streaming import STREAM_BYTES, RowArray, decoded_cache, default_workers
from dlkit.errors import InputError
from dlkit.data.dataset import (Dataset, _sorted_labels, check_data_options, make_dataset, make_regression_dataset,
                                value_range)



IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# -- user files ------------------------------------------------------------------------------------
def load_csv(source: str, options: dict, seed: int) -> Dataset:
    """Numeric features and one target column (see :mod:`dlkit.data.csv_table` for how the file
    is read and the target chosen); ``data.missing`` = error (default), drop or mean.

    Features are standardised with the training split's mean and standard deviation, recorded
    in the input spec so the exported graph accepts raw feature values.
    """
    from dlkit.data.csv_table import check_target, features_and_labels, read_table, target_column

    path = Path(source)
    if options.get("targets") == "none":  # every column is a feature (clustering)
        from dlkit.data.unlabelled import load_csv_unlabelled

        return load_csv_unlabelled(path, options, seed)
    check_data_options(str(path), options, ("target", "missing"))
    table = read_table(path)
    t = target_column(table, options.get("target"))
    feats, labels = features_and_labels(table, t, str(options.get("missing", "error")),
                                        chosen=options.get("target") is not None)
    if not feats:
        raise InputError(f"{path}: no data rows")
    target = table.header[t]
    x = np.asarray(feats, dtype=np.float32)
    features = [h for i, h in enumerate(table.header) if i != t]
    if options.get("targets") == "values":  # --set task=regression: the target holds numbers
        return _csv_regression(path, x, labels, target, features, seed, options)
    check_target(path, target, labels)
    names = _sorted_labels(labels)
    y = np.array([names.index(v) for v in labels])
    if table.class_names and len(table.class_names) == len(names) and names == [str(i) for i in range(len(names))]:
        names = table.class_names  # sklearn's file: class i is the i-th name of its first line
    spec = {"kind": "tabular", "shape": [x.shape[1]], "dtype": "float32", "range": value_range(x),
            "features": features, "target": target,
            "rows": len(labels)}
    ds = make_dataset(path.name, x, y, names, spec, seed, options)
    _standardize(ds)
    return ds


def _csv_regression(path: Path, x: np.ndarray, cells: list[str], target: str, features: list[str], seed: int,
                    options: dict) -> Dataset:
    from dlkit.data.dataset import is_number

    bad = next((c for c in cells if not is_number(c)), None)
    if bad is not None:
        raise InputError(f"{path}: target column {target!r} holds {bad!r}: regression needs numbers")
    spec = {"kind": "tabular", "shape": [x.shape[1]], "dtype": "float32", "range": value_range(x),
            "features": features, "target": target, "rows": len(cells)}
    ds = make_regression_dataset(path.name, x, np.asarray(cells, dtype=np.float32), [target], spec, seed, options)
    _standardize(ds)
    return ds


def _standardize(ds: Dataset) -> None:
    mean = ds.x_train.mean(axis=0)
    std = ds.x_train.std(axis=0)
    std[std == 0] = 1.0
    ds.input_spec["preprocessing"] = {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}


def load_npz(source: str, options: dict, seed: int) -> Dataset:
    """An ``.npz`` with arrays ``x`` (N, ...) and integer ``y`` (N,).

    ``x`` of shape (N, F) is tabular, (N, T, F) a sequence (``data.kind=image`` reads it as
    single-channel images), (N, C, H, W) images.
    """
    path = Path(source)
    check_data_options(str(path), options, ("kind",))
    from dlkit.data.arrays import npz_keys, read_npz

    arrays = read_npz(path, ["x", "y"])  # sizes checked before anything is inflated
    needed = {"x"} if options.get("targets") == "none" else {"x", "y"}
    missing = needed - set(arrays)
    if missing:
        raise InputError(f"{path}: missing array(s) {', '.join(sorted(missing))} (has: {', '.join(npz_keys(path))})")
    x = arrays["x"]
    y = arrays["y"] if "y" in arrays else np.zeros(len(x), np.int64)
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
    to [0, 1]; ``data.invert=true`` takes their negative (dark drawings on white paper, to match
    light-on-dark data), and the model's preprocessing records it so ``predict`` does the same.
    A folder whose float32 pixels would pass 2 GiB (or ``data.stream=true``) is decoded once by
    worker processes into a cached uint8 file and streamed from it (dlkit.data.streaming).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(source)
    check_data_options(str(root), options, ("size", "invert", "stream"))
    invert = options.get("invert", False)
    if not isinstance(invert, bool):
        raise InputError(f"data.invert must be true or false, got {invert!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c: sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    files = {c: fs for c, fs in files.items() if fs}
    if len(files) < 2:
        raise InputError(
            f"{root}: an image folder needs one sub-folder per class with at least 2 classes, found {len(files)}"
        )
    paths = [p for fs in files.values() for p in fs]
    y = np.array([label for label, fs in enumerate(files.values()) for _ in fs])
    stream = options.get("stream", "auto")
    if stream not in ("auto", True, False):
        raise InputError(f"{root}: data.stream must be auto, true or false, got {stream!r}")
    if stream is not False:
        size, mode = _folder_geometry(paths, options)
        nbytes = len(paths) * (3 if mode == "RGB" else 1) * size[0] * size[1] * 4
        if stream is True or nbytes > STREAM_BYTES:
            # Too large for float32 arrays: decode once, in parallel, into a uint8 cache the
            # splits read rows of (dlkit.data.streaming).
            x = RowArray(decoded_cache(root, paths, size, mode, default_workers()), divisor=255.0, invert=invert)
            return make_dataset(root.name, x, y, list(files), _image_spec(x.shape, mode, size, invert), seed, options)
    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"{p}: cannot decode image ({exc})") from None
    color = any(im.mode not in GRAY_MODES for im in images)
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
        a = 1.0 - a if invert else a
        arrays.append(a.transpose(2, 0, 1) if color else a[None])
    x = np.stack(arrays)
    return make_dataset(root.name, x, y, list(files), _image_spec(x.shape, mode, size, invert), seed, options)


GRAY_MODES = ("L", "1", "I", "I;16", "LA")


def _image_spec(shape: tuple, mode: str, size: tuple[int, int], invert: bool) -> dict:
    return {"kind": "image", "shape": list(shape[1:]), "dtype": "float32", "range": [0.0, 1.0],
            "layout": "NCHW", "invert": invert,
            "preprocessing": f"{mode} image resized to {size[0]}x{size[1]}, "
                             f"{'1 - pixel / 255' if invert else 'pixel / 255'}"}


def _folder_geometry(paths: list[Path], options: dict) -> tuple[tuple[int, int], str]:
    """(size, mode) the images will be decoded to, from their headers alone (no pixel decoded)."""
    from PIL import Image, UnidentifiedImageError

    sizes, color = [], False
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
                color = color or im.mode not in GRAY_MODES
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"{p}: cannot decode image ({exc})") from None
    size = parse_size(options["size"]) if "size" in options else max(set(sizes), key=sizes.count)
    return size, "RGB" if color else "L"


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


