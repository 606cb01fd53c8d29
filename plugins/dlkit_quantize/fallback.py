"""Accuracy-aware per-layer fallback: which layers quantization hurts, and the fewest to keep float.

Sensitivity (:func:`sensitivity`) is measured, not guessed: for each quantizable node of the
prepared graph, the candidate is built with **only that node** quantized and run on the
calibration data; the node's sensitivity is the mean absolute difference of the compared output
from the float graph's, relative to the float output's mean magnitude (percent), and the share
of calibration samples whose top class changed. That catches what local signal-to-noise ratios
miss (a layer whose int8 weights keep a 50 dB SQNR and still swap every class). Graphs with more
than :data:`MAX_PROBED` quantizable nodes are probed on their first ones only.

Fallback (:func:`fallback`): the candidate is rebuilt with the most sensitive 1, 2, 3... nodes
excluded (kept float) until its quality drop is within the tolerance, at most
:data:`MAX_STEPS` rebuilds; the first that passes is a new candidate named ``<name>+float<k>``
with the nodes it kept float in its options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .methods import RECURRENT_OPS, STATIC_SKIP_OPS, Candidate, build

MAX_PROBED = 48
MAX_STEPS = 6
PROBE_SAMPLES = 64
QUANTIZABLE = {"static": ("Conv", "Gemm", "MatMul", *RECURRENT_OPS), "dynamic": ("Gemm", "MatMul", "LSTM"),
               "weight-only": ("Gemm", "MatMul")}


def quantizable_nodes(prepared: Path, candidate: Candidate) -> list[tuple[str, str]]:
    """(name, op type) of the nodes ``candidate`` would quantize, in graph order."""
    import onnx

    ops = set(candidate.options.get("op_types") or QUANTIZABLE.get(candidate.method, ())) - set(STATIC_SKIP_OPS)
    if candidate.method == "dynamic" and "Gemm" in ops:
        ops.add("MatMul")
    graph = onnx.load(str(prepared), load_external_data=False).graph
    return [(n.name, n.op_type) for n in graph.node if n.op_type in ops and n.name]


def sensitivity(candidate: Candidate, prepared: Path, folder: Path, calibration, parent_session_factory: Callable,
                feeds: dict[str, np.ndarray], output: str) -> list[dict]:
    """Per-node sensitivity rows, most sensitive first: ``node``, ``op_type``, ``error_percent``,
    ``argmax_changed`` (share of samples), measured with only that node quantized."""
    nodes = quantizable_nodes(prepared, candidate)
    reference = _run(parent_session_factory(prepared), feeds, output)
    scale = float(np.abs(reference).mean()) or 1.0
    rows = []
    for i, (name, op) in enumerate(nodes[:MAX_PROBED]):
        others = [n for n, _ in nodes if n != name]
        probe = replace(candidate, name=f"probe-{i}", options={**candidate.options, "nodes_to_exclude": others})
        path = folder / f"probe-{i}.onnx"
        try:
            build(probe, prepared, path, calibration)
            out = _run(parent_session_factory(path), feeds, output)
        except Exception as exc:  # noqa: BLE001 -- a node the quantizer cannot take alone is reported, not fatal
            rows.append({"node": name, "op_type": op, "error_percent": None, "argmax_changed": None,
                         "error": f"{type(exc).__name__}: {str(exc)[:120]}"})
            continue
        changed = float((out.argmax(-1) != reference.argmax(-1)).mean()) if out.ndim == 2 else None
        rows.append({"node": name, "op_type": op, "error_percent": float(np.abs(out - reference).mean()) / scale * 100,
                     "argmax_changed": changed, "error": None})
    rows.sort(key=lambda r: -1.0 if r["error_percent"] is None else -r["error_percent"])
    return rows


def add_sqnr(rows: list[dict], prepared: Path, qdq: Path, folder: Path, calibration) -> None:
    """Add onnxruntime's ``qdq_loss_debug`` view to the rows, in place: ``sqnr_db``, the signal to
    quantization noise ratio of each node's output in the whole QDQ graph against float (what
    the error has accumulated to there), None where it does not apply."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from .graph import quiet

    for r in rows:
        r["sqnr_db"] = None
    try:
        with quiet():
            float_aug, qdq_aug = folder / "float-debug.onnx", folder / "qdq-debug.onnx"
            modify_model_output_intermediate_tensors(str(prepared), str(float_aug))
            modify_model_output_intermediate_tensors(str(qdq), str(qdq_aug))
            errors = compute_activation_error(create_activation_matching(
                collect_activations(str(qdq_aug), calibration.reader()),
                collect_activations(str(float_aug), calibration.reader())))
    except Exception:  # noqa: BLE001 -- a debugging view: a graph it cannot follow keeps the measured columns only
        return
    outputs = {n.name: n.output[0] for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    for r in rows:
        err = errors.get(outputs.get(r["node"], ""), {})
        value = err.get("xmodel_err")
        r["sqnr_db"] = float(value) if value is not None and np.isfinite(value) else None


def _run(session, feeds: dict, output: str) -> np.ndarray:
    names = [o.name for o in session.outputs]
    out = session.session.run([output if output in names else names[0]], feeds)[0]
    return np.asarray(out, dtype=np.float64).reshape(len(out), -1)


def probe_feeds(calibration, input_name: str | None = None) -> dict[str, np.ndarray]:
    """The first :data:`PROBE_SAMPLES` calibration samples (a stratified, shuffled sample already)."""
    return {k: v[:PROBE_SAMPLES] for k, v in calibration.feeds.items()}


def fallback(candidate: Candidate, ranked: list[dict], prepared: Path, folder: Path, calibration,
             passes: Callable[[Path], tuple[bool, Any]], log: Callable[[str], None],
             precision: str = "float32") -> tuple[Candidate, Path, Any] | None:
    """The candidate with the fewest most-sensitive nodes kept float that ``passes``; None if none
    of the first :data:`MAX_STEPS` do. ``passes(path)`` measures a built graph: (ok, measurement).
    With ``precision`` float16 the nodes found are then kept in float16 instead (mixed int8 +
    float16), if that passes too; else they stay float32."""
    order = [r["node"] for r in ranked if r["error_percent"] is not None]
    for k in range(1, min(MAX_STEPS, len(order) - 1) + 1):
        kept = order[:k]
        name = f"{candidate.name}+float{k}"
        trial = Candidate(name, candidate.method, {**candidate.options, "nodes_to_exclude": kept},
                          f"{candidate.why}; {k} most sensitive node(s) kept float: {', '.join(kept)}")
        path = folder / f"{name}.onnx"
        log(f"fallback: {name} (float: {', '.join(kept)})")
        try:
            build(trial, prepared, path, calibration)
        except Exception:  # noqa: BLE001 -- the quantizer refused this split: try keeping one more float
            continue
        ok, measured = passes(path)
        if not ok:
            continue
        if precision == "float16":
            half = _in_float16(candidate, kept, prepared, folder, calibration, passes, log)
            if half is not None:
                return half
        return trial, path, measured
    return None


def _in_float16(candidate: Candidate, kept: list[str], prepared: Path, folder: Path, calibration, passes,
                log) -> tuple[Candidate, Path, Any] | None:
    """``candidate`` with the nodes ``kept`` out of int8 computing in float16, if it passes."""
    name = f"{candidate.name}+fp16-{len(kept)}"
    half = Candidate(name, candidate.method,
                     {**candidate.options, "nodes_to_exclude": kept, "kept_precision": "float16"},
                     f"{candidate.why}; {len(kept)} most sensitive node(s) kept in float16: {', '.join(kept)}")
    path = folder / f"{name}.onnx"
    log(f"fallback: {name} (the same nodes in float16)")
    try:
        build(half, prepared, path, calibration)
    except Exception as exc:  # noqa: BLE001 -- the converter refused: the float32 fallback stands
        log(f"fallback: {name} could not be built ({type(exc).__name__}: {str(exc)[:120]}); kept float32")
        return None
    ok, measured = passes(path)
    return (half, path, measured) if ok else None
