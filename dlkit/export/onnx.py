"""torch -> ONNX: one self-contained model.onnx per version, checked against torch before it is written."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
import warnings
from datetime import datetime, timezone
from typing import Any

from dlkit import __version__
from dlkit.errors import DlkitError, InputError, first_line
from dlkit.export.graph import OnnxGraph, export_graph
from dlkit.export.parity import TOLERANCE, ParityError, compare, parity_cases, torch_runner
from dlkit.export.triton import label_file_for, triton_config_for
from dlkit.store.atomic import json_bytes, temporary_beside, write_together
from dlkit.store.meta import default_opset
from dlkit.store.repository import META, ModelVersion

EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_MIN_OPSET = 18  # the dynamo exporter builds opset 18+ graphs; older ones come from the tracer
TRACER_OPSET = 17  # the tracer's default here: widely supported by onnxruntime and Triton builds
# -- export ---------------------------------------------------------------------------------------
def export_onnx(version: ModelVersion, opset: int | None = None, exporter: str = "auto",
                tolerance: float = TOLERANCE) -> dict:
    """Export ``version`` to ``model.onnx`` in its folder, checked against torch; returns the report.

    ``exporter``: ``dynamo`` (torch.export based, torch's default), ``torchscript`` (the legacy
    tracer), or ``auto``: the tracer, then dynamo when the tracer fails or its graph fails the
    parity check (see the comment below for why in that order). Nothing is written
    unless a graph passes ``onnx.checker`` and parity within ``tolerance``.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise InputError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if opset is not None and not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(f"--opset must be between 7 and {onnx.defs.onnx_opset_version()}, got {opset}")
    started = time.perf_counter()
    graph = export_graph(version)
    meta = version.meta
    cases = parity_cases(meta, graph)
    reference = torch_runner(graph)
    props = onnx_metadata(version, graph)
    # auto: the tracer first, dynamo when the tracer fails or its graph fails the parity check.
    # Measured with torch 2.13 on 2 CPU cores: both exporters give graphs within 1e-6 of torch
    # for mlp, cnn, LSTM and GRU at batch 1 and 37 and at other sequence lengths, and
    # onnxruntime runs both equally fast, but the tracer exports in 0.5-1.5 s where dynamo
    # takes 3-10 s (LSTM/GRU: 8-45 s on a busy machine). The tracer's known risk is a graph
    # that is right only at the traced size (the LSTM/GRU batch-size pitfall, or a size read
    # into Python). Tracing uses a batch of 2 and the parity check runs batches 1 and 37 (and a
    # second sequence length), so such a graph is rejected and dynamo, which keeps sizes
    # symbolic, takes over. dynamo is not immune either (its capture can fall back to a draft
    # export that fixes a size), which is why every graph, whoever made it, passes the same
    # check. When torch drops the deprecated tracer, auto becomes dynamo by the same fallback.
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if exporter == "auto" and opset is not None and opset < DYNAMO_MIN_OPSET:
        order = ["torchscript"]  # dynamo would build opset 18 and fail to convert it down
    failures = []
    for name in order:
        try:
            proto = _export(graph, name, opset)
        except Exception as exc:  # noqa: BLE001 - each exporter raises its own error types
            failures.append(f"{name} exporter failed: {first_line(exc, typed=True, limit=300)}")
            continue
        got_opset = default_opset(proto) or 0
        if opset is not None and got_opset != opset:
            failures.append(f"{name} exporter gave opset {got_opset}, not {opset}")
            continue
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **props})
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError, shape inference errors
            failures.append(f"{name} exporter: onnx.checker: {first_line(exc, typed=True, limit=300)}")
            continue
        tmp = temporary_beside(version.inside(version.onnx_path))
        try:
            parity, session = _check(tmp, proto, reference, cases, tolerance)
        except ParityError as exc:
            tmp.unlink(missing_ok=True)
            failures.append(f"{name} exporter: {exc}")
            continue
        except DlkitError as exc:  # onnxruntime cannot load or run what the exporter wrote
            tmp.unlink(missing_ok=True)
            failures.append(f"{name} exporter: {exc}")
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return _finish(version, tmp, session, parity, name, got_opset, tolerance, len(cases), started, failures)
    raise DlkitError(f"export of {version.ref} failed, nothing written: {'; '.join(failures)}")


def _check(tmp, proto, reference, cases, tolerance) -> tuple[dict, Any]:
    """Write the graph to ``tmp`` (a temporary beside model.onnx) and run the parity check on
    exactly those bytes; returns (parity, session). Publishing is :func:`_finish`'s."""
    from dlkit.infer.session import Session

    tmp.write_bytes(proto.SerializeToString())  # OSError (a full disk): one line from the CLI
    # CPU on purpose: the check is about the export, not about a GPU's float behaviour.
    session = Session(tmp, "cpu")
    parity = compare(reference, session.run, cases)
    if parity["max_rel_diff"] > tolerance:
        raise ParityError(parity, tolerance)
    return parity, session


def _finish(version, tmp, session, parity, exporter, opset, tolerance, n_cases, started, failures) -> dict:
    """Publish meta.json's onnx record, model.onnx and config.pbtxt as one step."""
    import onnx
    import torch

    data = tmp.read_bytes()
    signature = {"inputs": [i.as_dict() for i in session.inputs], "outputs": [o.as_dict() for o in session.outputs]}
    record = {
        "opset": opset, "exporter": exporter, "max_abs_diff": parity["max_abs_diff"],
        "max_rel_diff": parity["max_rel_diff"], "tolerance": tolerance,
        "checks": n_cases, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **signature,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"dlkit": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
    }
    config, text = triton_config_for(version, record)
    meta = {**version.meta, "onnx": record}
    # The record first: a crash between the renames leaves it without model.onnx (not served),
    # never a model.onnx without its record.
    labels = label_file_for(version, record)  # labels.txt, which config.pbtxt names (Triton's labels)
    write_together([(version.inside(version.path / META), json_bytes(meta)), (version.inside(version.onnx_path), tmp),
                    *([labels] if labels else []), (config, text.encode())])
    version.__dict__["meta"] = meta  # the cached meta, as update_meta keeps it
    session.path = version.onnx_path
    for note in failures:  # an auto export that needed its fallback says why
        print(f"dlkit: note: {note}", file=sys.stderr)
    return {"model": version.name, "version": version.version, "path": str(version.onnx_path),
            "config": str(config),
            **{k: record[k] for k in ("opset", "exporter", "max_abs_diff", "max_rel_diff", "tolerance",
                                      "bytes", "inputs", "outputs")},
            "parity": parity, "seconds": round(time.perf_counter() - started, 3)}


def _export(graph: OnnxGraph, exporter: str, opset: int | None):
    """Run one of torch's exporters; returns the ONNX ModelProto (weights inside, no side file)."""
    import io

    import onnx
    import torch

    args = tuple(graph.example_inputs.values())
    names = list(graph.example_inputs)
    axes = graph.axes()
    with _quiet_exporter():
        if exporter == "dynamo":
            # torch.export traces with symbolic sizes: the batch (and sequence) axes stay
            # symbolic through LSTM/GRU, so no size is baked into the recurrent nodes.
            dims: dict[str, Any] = {}
            shapes = tuple({axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes[n].items()}
                           for n in names)
            program = torch.onnx.export(graph.module, args, None, dynamo=True, input_names=names,
                                        output_names=graph.output_names, dynamic_shapes=shapes,
                                        opset_version=opset, external_data=False, optimize=True, verbose=False)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(graph.module, args, buffer, dynamo=False, input_names=names,
                          output_names=graph.output_names, dynamic_axes=axes, opset_version=opset or TRACER_OPSET,
                          do_constant_folding=True)
        return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress and warn about things users cannot act on; keep stdout clean
    for ``--json`` and stderr for what matters."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def onnx_metadata(version: ModelVersion, graph: OnnxGraph) -> dict[str, str]:
    """The ``metadata_props`` a runtime needs without torch (JSON strings)."""
    import json

    from dlkit.store.meta import input_preprocessing

    meta = version.meta
    spec = meta.get("input_spec") or {}
    props = {
        "dlkit_version": __version__, "model": version.name, "version": version.version,
        "arch": meta.get("arch"), "task": meta.get("task", "classification"), "labels": meta.get("labels"),
        "input_spec": spec, "preprocessing": input_preprocessing(spec) if spec else None,
        "target_spec": meta.get("target_spec"),
        "parent": meta.get("parent"), "method": meta.get("method"),
        **graph.metadata,
    }
    return {k: json.dumps(v) for k, v in props.items()}


