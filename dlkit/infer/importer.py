"""``dlkit import onnx``: an ONNX file from anywhere becomes a model version like an exported one.

The file passes the same checks as every ONNX file dlkit opens (external data inside its
folder), onnxruntime reads its inputs and outputs, and the version is published through
:func:`dlkit.store.derive.derive` (staged, then renamed: bad input leaves nothing behind) with
model.onnx, a meta.json written from the graph, and a Triton config.pbtxt. No torch.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from dlkit.errors import DlkitError, InputError
from dlkit.infer.onnx_files import check_external_data, graph_params
from dlkit.store.meta import default_opset, import_task, parse_labels
from dlkit.store.repository import ModelRepository, check_name

TRITON_BATCH = 64


def import_onnx(repo: ModelRepository, file: str | Path, name: str, labels: str | list[str] | None = None,
                task: str | None = None) -> dict:
    """Store ``file`` as the next version of model ``name``; returns what was written."""
    import onnx

    check_name(name)
    path = Path(file)
    if not path.is_file():
        raise InputError(f"{file}: no such ONNX file")
    names = parse_labels(labels) if isinstance(labels, str) or labels is None else list(labels)
    task = import_task(task, names)
    check_external_data(path)
    try:
        proto = onnx.load(str(path))  # external data (checked above) is pulled into one file
        data = proto.SerializeToString()
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, 2 GiB limit, missing data file
        raise InputError(f"{path}: not a valid ONNX file ({_first_line(exc)})") from None
    session = _session(path, data)
    signature = {"inputs": [i.as_dict() for i in session.inputs], "outputs": [o.as_dict() for o in session.outputs]}
    spec = describe_inputs(session.inputs)
    if names is not None:
        _check_labels(path, session, names)
    record = {**signature, "opset": default_opset(proto),
              "ir_version": proto.ir_version, "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "source": "dlkit import onnx"}
    from dlkit.store.atomic import write_bytes
    from dlkit.store.derive import derive

    with derive(repo, None, "import", name, inherit=()) as new:
        write_bytes(new.path / "model.onnx", data)
        new.meta.update(task=task, onnx=record, params=graph_params(proto),
                        source={"kind": "onnx", "file": str(path.resolve()),
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        if names is not None:
            new.meta.update(labels=names, num_classes=len(names))
        if spec is not None:
            new.meta["input_spec"] = spec
    version = new.version
    config = triton_config(version)
    return {"model": version.name, "version": version.version, "path": str(version.path), "task": task,
            "labels": names, "config": str(config) if config else None, **{k: record[k] for k in
            ("opset", "bytes", "sha256", "inputs", "outputs")}}


def _session(path: Path, data: bytes):
    """onnxruntime's view of the graph (CPU): the bytes that will be stored, loaded once."""
    import tempfile

    from dlkit.infer.session import Session

    with tempfile.TemporaryDirectory(prefix="dlkit-import-") as tmp:
        staged = Path(tmp) / "model.onnx"
        staged.write_bytes(data)
        session = Session(staged, "cpu")
        session.path = path  # messages name the user's file
        return session


def describe_inputs(inputs) -> dict | None:
    """An ``input_spec`` for a graph of one float input with a dynamic batch axis and fixed
    sample dims (what predict from CSV/images and bench of a classifier read); else None."""
    if len(inputs) != 1:
        return None
    info = inputs[0]
    sample = list(info.shape[1:])
    if not info.shape or info.shape[0] is not None or not info.dtype.startswith("float") or None in sample:
        return None
    kind = "tabular" if len(sample) == 1 else "image" if len(sample) == 3 and sample[0] in (1, 3) else "tensor"
    return {"kind": kind, "shape": sample, "dtype": info.dtype}  # no range: the graph does not say


def _check_labels(path: Path, session, names: list[str]) -> None:
    """Labels name the classes of the first output, (batch, classes): their count must match."""
    out = session.outputs[0]
    if not out.dtype.startswith("float") or len(out.shape) != 2:
        raise InputError(f"{path}: --labels needs a first output of shape (batch, classes); "
                         f"output {out.name!r} is {out.dtype} {list(out.shape)}")
    classes = out.shape[-1]
    if classes is not None and classes != len(names):
        raise InputError(f"--labels: {len(names)} names, but output {out.name!r} of {path} has {classes} classes")


def triton_config(version) -> Path | None:
    """config.pbtxt: batched when every input and output has a dynamic first axis, else
    ``max_batch_size: 0`` with full shapes; a graph Triton cannot describe is a warning."""
    from dlkit.export.triton import write_triton_config  # torch-free

    record = version.meta["onnx"]
    tensors = record["inputs"] + record["outputs"]
    batched = all(t["shape"] and t["shape"][0] is None for t in tensors)
    try:
        return write_triton_config(version, TRITON_BATCH if batched else 0)
    except DlkitError as exc:
        print(f"dlkit: warning: no config.pbtxt for {version.ref}: {exc}", file=sys.stderr)
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
