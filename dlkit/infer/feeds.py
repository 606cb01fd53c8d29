"""Arrays from ``.npy``/``.npz`` files as feeds for any ONNX graph: one array per input name,
each checked against the graph's shape and dtype (a batch axis is added to a single sample).

Used by ``predict`` on graphs that are not single-input classifiers and by the quantizer's
``--calibration-data``/``--data``. No torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlkit.errors import InputError, first_line

# graph dtype kind -> array dtype kinds that convert to it without losing meaning
ACCEPTS = {"f": "fiub", "i": "iub", "u": "iub", "b": "biu"}


def read_feeds(source: str | Path | dict, inputs: list) -> dict[str, np.ndarray]:
    """``{input name: array}`` from a file for a graph with ``inputs`` (runtime TensorInfo list).

    ``.npy``: one array, for a graph of one input. ``.npz``: one array per input name (an
    array ``x`` stands for a single input of another name); other arrays are ignored. A dict
    ``{input name: .npy path}`` (``predict --input NAME=FILE``): one file per input.
    """
    names = [i.name for i in inputs]
    if isinstance(source, dict):
        arrays = _named_arrays(source, names)
        files = {name: str(file) for name, file in source.items()}
    else:
        arrays = _file_arrays(source, names)
        files = dict.fromkeys(names, str(source))
    feeds = {info.name: fit_feed(arrays[info.name], f"{files[info.name]}:{info.name}", info) for info in inputs}
    sizes = {len(a) for a, info in zip(feeds.values(), inputs) if _batched(info)}
    if len(sizes) > 1:
        counts = ", ".join(map(str, sorted(sizes)))
        raise InputError(f"{source_label(source)}: the arrays hold different numbers of samples ({counts})")
    return feeds


def source_label(source: str | Path | dict) -> str:
    """How an input appears in predict's output: the file, or ``name=file, ...``."""
    return ", ".join(f"{k}={v}" for k, v in source.items()) if isinstance(source, dict) else str(source)


def _file_arrays(source: str | Path, names: list[str]) -> dict[str, np.ndarray]:
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(names) != 1:
            raise InputError(f"{source}: the model has {len(names)} inputs ({', '.join(names)}); "
                             f"give an .npz with one array per input name, or --input NAME=FILE.npy for each")
        return {names[0]: _load_npy(path)}
    if suffix == ".npz":
        return _load_npz(path, names)
    raise InputError(f"{source}: unsupported input type {suffix or '(no suffix)'!r} for this model; "
                     f"expected .npy or .npz (one array per input: {', '.join(names)})")


def _named_arrays(files: dict, names: list[str]) -> dict[str, np.ndarray]:
    check_input_names(files, names)
    arrays = {}
    for name, file in files.items():
        path = Path(file)
        if not path.is_file():
            raise InputError(f"--input {name}={file}: no such file")
        if path.suffix.lower() != ".npy":
            raise InputError(f"--input {name}={file}: give a .npy file (one array per input)")
        arrays[name] = _load_npy(path)
    return arrays


def check_input_names(files: dict, names: list[str]) -> None:
    """``--input NAME=FILE`` must name each graph input once, and nothing else."""
    unknown = [n for n in files if n not in names]
    if unknown:
        raise InputError(f"--input {unknown[0]}=...: the model has no input {unknown[0]!r} "
                         f"(it has: {', '.join(names)})")
    missing = [n for n in names if n not in files]
    if missing:
        raise InputError(f"--input: nothing given for model input {missing[0]!r} (give --input {missing[0]}=FILE.npy)")


def parse_named_inputs(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--input NAME=FILE`` values as {name: file}; a name given twice is an error."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise InputError(f"--input {value!r}: give NAME=FILE.npy, e.g. --input state=state.npy")
        if name in named:
            raise InputError(f"--input {name}: given twice")
        named[name] = file
    return named


def fit_feed(arr: np.ndarray, where: str, info) -> np.ndarray:
    """``arr`` converted to ``info``'s dtype and shape, or an InputError naming both."""
    want = np.dtype(info.dtype)
    if arr.dtype.kind not in ACCEPTS.get(want.kind, want.kind):
        raise InputError(f"{where}: dtype {arr.dtype} does not fit model input {info.name!r} ({info.dtype})")
    shape = tuple(info.shape)
    if arr.ndim == len(shape) - 1 and shape and shape[0] in (None, 1):
        arr = arr[None]  # one sample of a batched input
    if arr.ndim != len(shape) or any(d is not None and d != g for d, g in zip(shape, arr.shape)):
        raise InputError(f"{where}: shape {shape_text(arr.shape)} does not fit model input {info.name!r}: "
                         f"expected {shape_text(shape)}")
    if want.kind == "b" and arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
        raise InputError(f"{where}: model input {info.name!r} is bool; the array holds values other than 0 and 1")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _batched(info) -> bool:
    return bool(info.shape) and info.shape[0] is None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({first_line(exc)})") from None


def _load_npz(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            if len(names) == 1 and names[0] not in files and "x" in files:
                return {names[0]: npz["x"]}
            missing = [n for n in names if n not in files]
            if missing:
                raise InputError(f"{path}: no array named {missing[0]!r} (model inputs: {', '.join(names)}; "
                                 f"the file has: {', '.join(files) or 'nothing'})")
            return {n: npz[n] for n in names}
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile .npz: BadZipFile, ValueError, OSError, ...
        raise InputError(f"{path}: not a readable .npz file ({first_line(exc)})") from None


def shape_text(shape) -> str:
    """A shape as numpy prints it, ``?`` for a dimension the graph leaves open: ``(?, 3)``, ``(4,)``."""
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
