"""Checks on ONNX files from outside, run before onnxruntime opens them.

An ONNX initializer may keep its bytes in an external file named by a relative ``location``.
A hostile model can point that at ``../../etc/passwd``, an absolute path or a symlink that
leaves the model's folder; dlkit refuses such files before any runtime reads them (recent
onnxruntime releases refuse them too, older ones do not).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from dlkit.errors import InputError


def check_external_data(path: str | os.PathLike) -> None:
    """Refuse an ONNX file whose external data would be read from outside its own folder."""
    path = Path(path)
    if not _mentions_location(path):
        return  # no external-data entry can exist without the key "location"
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{path}: not a valid ONNX file ({str(exc)[:200]})") from None
    folder = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if not location:
            raise InputError(f"{path}: initializer {tensor.name!r} has external data without a location")
        if os.path.isabs(location) or Path(location).drive or "\\" in location:
            raise InputError(f"{path}: initializer {tensor.name!r} reads external data from an absolute path {location!r}")
        parts = Path(location).parts
        if ".." in parts:
            raise InputError(f"{path}: initializer {tensor.name!r} reads external data outside its folder ({location!r})")
        target = (path.parent / location).resolve()
        if folder != target and folder not in target.parents:
            raise InputError(
                f"{path}: initializer {tensor.name!r} reads external data through a link leaving its folder ({location!r})"
            )


def _mentions_location(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return m.find(b"location") != -1
    except FileNotFoundError:
        raise InputError(f"{path}: no such ONNX file") from None


def _tensors(graph):
    """Every initializer and constant tensor, subgraphs (If/Loop/Scan bodies) included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)
