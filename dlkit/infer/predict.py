"""``dlkit predict``: what a model says about files (a classifier's labels and top-k probabilities,
a regressor's values: its task prints them), through onnxruntime only.

Inputs may be ``.npy``/``.npz`` arrays (one sample or a batch), images (PNG, JPEG... converted
to the model's input spec) or CSV files (one sample per row; a header row is detected). This
module imports neither torch nor sklearn: what it needs to know about the model (labels, input
spec, preprocessing) travels in the ONNX file's metadata.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from dlkit.data.dataset import is_number
from dlkit.errors import InputError, first_line
from dlkit.infer.feeds import check_input_names, read_feeds, shape_text, source_label
from dlkit.store.meta import input_preprocessing
from dlkit.store.repository import ModelVersion

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")


def predict(version: ModelVersion, inputs: list, provider: str = "auto", top_k: int = 3, *,
            strict: bool = False, threads: int | None = None, optimization: str = "all",
            invert: bool = False) -> dict:
    """Run ``version``'s model.onnx on each input file; one prediction per sample, as its task describes it.

    An input is a file, or a dict ``{graph input name: .npy file}`` (``--input NAME=FILE``) for
    graphs of several inputs.

    ``invert``: read images as their negative (a black-on-white drawing for a model trained on
    light-on-dark digits). A sample far outside the training inputs gets a ``warning``.
    """
    from dlkit.data.input_stats import expected_input, unusual_inputs
    from dlkit.infer.session import Session

    if not inputs:
        raise InputError("predict: give at least one input file (or --input NAME=FILE.npy per graph input)")
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    if not version.has_onnx():
        raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
    session = Session(version.onnx_path, provider, strict=strict, threads=threads, optimization=optimization)
    info = model_info(session, version)
    info["invert"] = invert
    from dlkit.plugins import get_registry

    task = get_registry().task_of({"task": info["task"]})
    if task is None or task.describe is None or len(session.inputs) != 1:
        return predict_outputs(version, session, inputs)  # any other graph: every output, as arrays
    feed = session.inputs[0]
    predictions = []
    for source in inputs:
        if isinstance(source, dict):  # --input NAME=FILE on a graph of one input: that file
            check_input_names(source, [feed.name])
            source = source[feed.name]
        batch, names = read_input(source, info, feed)
        outputs = session.run({feed.name: batch})
        described = task.describe(outputs, names, info, top_k)
        for prediction, unusual in zip(described, unusual_inputs(batch, info["input_spec"])):
            predictions.append({**prediction, "warning": unusual})
    return {"model": version.name, "version": version.version, "providers": session.providers,
            "expects": expected_input(info["input_spec"]), "predictions": predictions}


def predict_outputs(version: ModelVersion, session, inputs: list) -> dict:
    """Every output of the graph for each ``.npy``/``.npz`` file (one array per input name), or
    each ``{input name: .npy file}`` dict."""
    results = []
    for source in inputs:
        out = session.run(read_feeds(source, session.inputs))
        results.append({"input": source_label(source), "outputs": {k: v.tolist() for k, v in out.items()},
                        "shapes": {k: list(v.shape) for k, v in out.items()}})
    return {"model": version.name, "version": version.version, "providers": session.providers,
            "outputs": results}


def model_info(session, version: ModelVersion) -> dict:
    """Labels, task and input spec: from the ONNX metadata, else from meta.json."""
    md = session.metadata
    meta: dict = {}
    if not all(k in md for k in ("labels", "input_spec", "task", "target_spec")):
        meta = version.meta
    spec = md.get("input_spec") or meta.get("input_spec") or {}
    return {"labels": md.get("labels") or meta.get("labels"),
            "task": md.get("task") or meta.get("task", "classification"), "input_spec": spec,
            "target_spec": md.get("target_spec") or meta.get("target_spec"),
            "preprocessing": md.get("preprocessing") or input_preprocessing(spec)}


# -- reading inputs ---------------------------------------------------------------------------------
def read_input(source: str, info: dict, feed) -> tuple[np.ndarray, list[str]]:
    """A file as a float32 batch for ``feed`` (a runtime TensorInfo), with a name per sample."""
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return fit_array(load_npy(path), source, feed)
    if suffix == ".npz":
        batches, names = [], []
        for key, arr in load_npz(path):
            b, n = fit_array(arr, f"{source}:{key}", feed)
            batches.append(b)
            names += n
        same = len({b.shape[1:] for b in batches}) == 1
        if not same:  # sequences of different lengths cannot share a batch
            shapes = ", ".join(str(b.shape[1:]) for b in batches)
            raise InputError(f"{source}: arrays have different sample shapes ({shapes}); use one file per shape")
        return np.concatenate(batches), names
    if suffix == ".csv":
        return fit_array(read_csv(path, info, feed), source, feed, csv_rows=True)
    if suffix in IMAGE_SUFFIXES:
        return fit_array(read_image(path, info, feed)[None], source, feed)
    raise InputError(f"{source}: unsupported input type {suffix or '(no suffix)'!r}; expected .npy, .npz, .csv "
                     f"or an image ({', '.join(IMAGE_SUFFIXES)})")


def load_npy(path: Path) -> np.ndarray:
    """An ``.npy`` input through dlkit's size-checked reader."""
    from dlkit.data.arrays import read_npy

    return read_npy(path)


def load_npz(path: Path) -> list[tuple[str, np.ndarray]]:
    """The array ``x`` when present (the layout ``--data`` reads), else every array in the file."""
    from dlkit.data.arrays import npz_keys, read_npz

    names = npz_keys(path)
    keys = ["x"] if "x" in names else names
    if not keys:
        raise InputError(f"{path}: the .npz holds no arrays")
    return list(read_npz(path, keys).items())


def fit_array(arr: np.ndarray, source: str, feed, csv_rows: bool = False) -> tuple[np.ndarray, list[str]]:
    """Check ``arr`` against the graph input and add the batch axis to a single sample.

    The graph input's shape has ``None`` for dynamic axes; a sample has its shape less the
    batch axis, a batch has it whole.
    """
    sample = tuple(feed.shape[1:])
    expected = f"{shape_text(sample)} or {shape_text(('N', *sample))}"
    if arr.dtype.kind not in "fiu":  # bool, complex, strings and objects are not model inputs
        raise InputError(f"{source}: dtype {arr.dtype} does not fit model input {feed.name!r}: expected "
                         f"{feed.dtype} (or another real number type)")
    got = arr.shape[1:] if csv_rows else arr.shape  # what the user gave, for the message
    if arr.ndim == len(sample) and not csv_rows:
        arr = arr[None]
    if arr.ndim != len(sample) + 1 or not all(d is None or d == g for d, g in zip(sample, arr.shape[1:])):
        raise InputError(f"{source}: shape {shape_text(got)} does not fit model input {feed.name!r}: "
                         f"expected {expected}")
    if len(arr) == 0:
        raise InputError(f"{source}: no samples (shape {shape_text(arr.shape)})")
    names = [source] if len(arr) == 1 else [f"{source}[{i}]" for i in range(len(arr))]
    return np.ascontiguousarray(arr, dtype=np.float32), names


def read_csv(path: Path, info: dict, feed) -> np.ndarray:
    """Numeric rows. Tabular and image models: one sample per row (a header may name the
    model's features, in any order, among other columns). Sequence models: the whole file is
    one sequence, one time step per row."""
    try:
        with open(path, newline="") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    if not rows:
        raise InputError(f"{path}: empty CSV file")
    header = None
    if not all(is_number(c) for c in rows[0][1]):
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    spec = info["input_spec"]
    features = spec.get("features")
    columns = None
    if header and features and set(features) <= set(header):
        columns = [header.index(f) for f in features]
    values = []
    for line, row in rows:
        cells = [row[c] for c in columns] if columns else row
        try:
            values.append([float(c) for c in cells])
        except ValueError:
            bad = next(c for c in cells if not is_number(c))
            raise InputError(f"{path}:{line}: not a number: {bad.strip()!r}") from None
    if not values:
        raise InputError(f"{path}: no data rows")
    widths = {len(v) for v in values}
    if len(widths) > 1:
        raise InputError(f"{path}: rows have different numbers of columns ({', '.join(map(str, sorted(widths)))})")
    arr = np.asarray(values, dtype=np.float64)
    sample = tuple(feed.shape[1:])
    if spec.get("kind") == "sequence":
        return arr[None]  # (1, steps, features)
    size = math.prod(d for d in sample if d is not None)
    if None not in sample and arr.shape[1] == size and len(sample) > 1:
        return arr.reshape(len(arr), *sample)  # e.g. 64 pixel columns of an 8x8 image
    if arr.shape[1] != size:
        raise InputError(f"{path}: {arr.shape[1]} columns do not fit model input {feed.name!r}: expected {size} "
                         f"numbers per row (shape {shape_text(sample)})")
    return arr


def read_image(path: Path, info: dict, feed) -> np.ndarray:
    """Decode an image and convert it to the model's input: mode, size, value range, NCHW."""
    from PIL import Image, UnidentifiedImageError

    prep = (info.get("preprocessing") or {}).get("image")
    if not prep:
        raise InputError(f"{path}: model input {feed.name!r} is not an image ({info['input_spec'].get('kind')} data); "
                         f"give .npy, .npz or .csv")
    if prep.get("mode") not in ("L", "RGB"):
        raise InputError(f"{path}: the model's images have an unsupported channel count "
                         f"({info['input_spec']['shape']})")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.convert(prep["mode"])
    # Pillow reports some corrupt PNG chunks as SyntaxError (found by the fuzz test).
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot decode image ({first_line(exc)})") from None
    size = (int(prep["width"]), int(prep["height"]))
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if bool(prep.get("invert")) != bool(info.get("invert")):  # trained on negatives xor --invert
        pixels = 1.0 - pixels
    lo, hi = prep.get("range") or [0.0, 1.0]
    pixels = lo + (hi - lo) * pixels
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


