"""Checks on ONNX files from outside, run before onnxruntime opens them.

An ONNX tensor may keep its bytes in an external file named by a relative ``location``.
A hostile model can point that at ``../../etc/passwd``, an absolute path or a symlink that
leaves the model's folder, from any place a tensor can live (initializers, sparse
initializers, ``Constant`` and other tensor attributes, subgraphs, function bodies, training
info). dlkit walks all of them and refuses such files before any runtime reads them.

A few bytes of graph can also ask for gigabytes at load (``ConstantOfShape`` of 5e8, folded
by onnxruntime when the session is created): tensors whose static shape is known are capped
at ``DLKIT_MAX_GRAPH_BYTES`` (default 1 GiB) each.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlkit.errors import InputError

EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}  # onnx's external_data keys
# Ops whose output can be far larger than the file (the only ones shape inference is run for).
GENERATORS = (b"ConstantOfShape", b"Expand", b"Tile", b"Range", b"Resize", b"Upsample", b"Pad",
              b"OneHot", b"EyeLike", b"RandomNormal", b"RandomUniform", b"Multinomial")
DEFAULT_MAX_GRAPH_BYTES = 1 << 30


def max_graph_bytes() -> int:
    """The cap on one statically shaped tensor of a graph (``DLKIT_MAX_GRAPH_BYTES``)."""
    raw = os.environ.get("DLKIT_MAX_GRAPH_BYTES", "")
    if not raw:
        return DEFAULT_MAX_GRAPH_BYTES
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InputError(f"DLKIT_MAX_GRAPH_BYTES must be a number of bytes, got {raw!r}")
    return int(raw)


def check_external_data(path: str | os.PathLike) -> None:
    """Refuse an ONNX file that would read data outside its folder or allocate past the cap."""
    path = Path(path)
    location, generators = _scan(path)
    if not (location or generators):
        return  # no external-data entry can exist without the key "location"
    model = _load(path)
    if location:
        folder = path.parent.resolve()
        for where, tensor in _tensors(model):
            _check_tensor(path, folder, where, tensor)
    if generators:
        _check_allocation(path, model)


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except RecursionError:
        raise InputError(f"{path}: not a valid ONNX file (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file: protobuf's DecodeError and friends
        raise InputError(f"{path}: not a valid ONNX file ({str(exc)[:200]})") from None


def _check_tensor(path: Path, folder: Path, where: str, tensor) -> None:
    import onnx

    keys = [e.key for e in tensor.external_data]
    if tensor.data_location != onnx.TensorProto.EXTERNAL and not keys:
        return
    what = f"{where} {tensor.name!r}"
    unknown = sorted(set(keys) - EXTERNAL_KEYS)
    if unknown:
        raise InputError(f"{path}: {what} has an unknown external-data key {unknown[0]!r}")
    if len(keys) != len(set(keys)):
        raise InputError(f"{path}: {what} repeats an external-data key ({', '.join(keys)})")
    entries = {e.key: e.value for e in tensor.external_data}
    if "basepath" in entries:  # onnx's loader joins it in front of location: refuse, never needed
        raise InputError(f"{path}: {what} sets an external-data basepath")
    location = entries.get("location")
    if not location:
        raise InputError(f"{path}: {what} has external data without a location")
    if os.path.isabs(location) or Path(location).drive or "\\" in location:
        raise InputError(f"{path}: {what} reads external data from an absolute path {location!r}")
    if ".." in Path(location).parts:
        raise InputError(f"{path}: {what} reads external data outside its folder ({location!r})")
    target = (path.parent / location).resolve()
    if folder != target and folder not in target.parents:
        raise InputError(f"{path}: {what} reads external data through a link leaving its folder ({location!r})")


def _scan(path: Path) -> tuple[bool, bool]:
    """(mentions "location", mentions a generator op): cheap byte searches before parsing."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False, False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return m.find(b"location") != -1, any(m.find(op) != -1 for op in GENERATORS)
    except FileNotFoundError:
        raise InputError(f"{path}: no such ONNX file") from None


def graph_params(model) -> int:
    """Weights in a loaded ONNX model: elements of its floating-point tensors wherever they live
    (initializers, ``Constant`` nodes, subgraphs, functions), not the integer shapes of reshapes."""
    import numpy as np
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    return int(sum(np.prod(t.dims, dtype=np.int64) for _, t in _tensors(model) if t.data_type in floats))


def _tensors(model) -> Iterator[tuple[str, Any]]:
    """Every tensor a model can hold: graph, functions and training info, subgraphs included."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph) -> Iterator[tuple[str, Any]]:
    for t in graph.initializer:
        yield "initializer", t
    for s in graph.sparse_initializer:
        yield "sparse initializer", s.values
        yield "sparse initializer", s.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator[tuple[str, Any]]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield "attribute tensor", attr.t
            for t in attr.tensors:
                yield "attribute tensor", t
            sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
            for s in sparse:
                yield "sparse attribute tensor", s.values
                yield "sparse attribute tensor", s.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _check_allocation(path: Path, model) -> None:
    """Refuse a graph in which one tensor of known shape exceeds :func:`max_graph_bytes`."""
    from onnx import helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - onnxruntime reports graphs onnx cannot infer; the cap needs shapes
        return
    limit = max_graph_bytes()
    graph = inferred.graph
    for info in [*graph.value_info, *graph.output]:
        t = info.type.tensor_type
        if not t.HasField("shape") or not t.elem_type:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if any(d is None for d in dims):
            continue  # dynamic: bounded by the request, which the caller checks
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
        except Exception:  # noqa: BLE001 - string or unknown element types: at least a byte each
            itemsize = 1
        size = math.prod(dims) * itemsize
        if size > limit:
            raise InputError(f"{path}: tensor {info.name!r} of shape {dims} would take {size:,} bytes at load "
                             f"(limit {limit:,}, DLKIT_MAX_GRAPH_BYTES)")
