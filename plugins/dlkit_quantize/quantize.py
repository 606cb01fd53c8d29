"""``dlkit quantize`` as a Python API: a model's ONNX graph in, a new, quantized model out.

The parent's ``model.onnx`` is prepared with ``quant_pre_process``, each candidate (one for an
explicit method, several for ``auto``) is built in a temporary folder, then the parent and
every candidate are measured on this machine with the chosen provider: quality on the
validation split (accuracy; a generator's Frechet distance), size on disk, latency at batch 1
and 64. The fastest candidate at batch 64 whose quality loss is within the tolerance becomes a
new model in the repository (``<name>-int8`` or ``<name>-fp16``); when none is, nothing is
written and :class:`NoCandidateError` carries the table.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlkit import DlkitError, InputError, ModelRepository, ModelVersion, check_name

from . import agreement, measure
from .fallback import add_sqnr, fallback, probe_feeds, sensitivity
from .graph import inspect_graph, preprocess
from .methods import CALIBRATIONS, FORMATS, METHODS, Calibration, Candidate, build, candidates, qat_candidate
from .publish import PARENT, build_meta, parent_ref, publish, stamp
from .select import OBJECTIVES, select, time_rounds

DEFAULTS = {
    "method": "auto", "calibration_samples": 256, "calibrate": "minmax", "per_channel": None, "format": None,
    "tolerance": None, "name": None, "provider": "auto", "op_types": None, "measure_seconds": 2.0, "threads": None,
    "batch_sizes": None, "optimize_for": "served", "report": False, "fallback": True, "qat_epochs": 3,
    "calibration_data": None, "data": None, "fallback_precision": None,
}
PRECISIONS = ("float32", "float16")
CPU = "CPUExecutionProvider"
MAX_FALLBACKS = 3  # failing candidates (one per method and format) that get a per-layer fallback


class NoCandidateError(DlkitError):
    """No candidate kept the quality within the tolerance (or none could be built): nothing written."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def check_options(version: ModelVersion, options: dict) -> dict:
    """Validate every option before any work: bad ones are an InputError naming the flag."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise InputError(f"quantize: unknown option {sorted(unknown)[0]!r}; known: {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if o["method"] not in METHODS:
        raise InputError(f"--method {o['method']}: unknown quantization method; expected one of {', '.join(METHODS)}")
    if o["calibrate"] not in CALIBRATIONS:
        raise InputError(f"--calibrate {o['calibrate']}: expected one of {', '.join(CALIBRATIONS)}")
    if o["format"] is not None and o["format"] not in FORMATS:
        raise InputError(f"--format {o['format']}: expected one of {', '.join(FORMATS)}")
    if isinstance(o["qat_epochs"], bool) or not isinstance(o["qat_epochs"], int) or o["qat_epochs"] < 1:
        raise InputError(f"--qat-epochs must be an integer >= 1, got {o['qat_epochs']!r}")
    if not isinstance(o["calibration_samples"], int) or o["calibration_samples"] < 1:
        raise InputError(f"--calibration-samples must be at least 1, got {o['calibration_samples']}")
    tol = o["tolerance"]
    if tol is not None and (not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0):
        raise InputError(f"--tolerance must be a number >= 0 (quality loss allowed), got {tol}")
    if not (isinstance(o["measure_seconds"], (int, float)) and o["measure_seconds"] > 0):
        raise InputError(f"--measure-seconds must be positive, got {o['measure_seconds']}")
    if o["threads"] is not None and (not isinstance(o["threads"], int) or o["threads"] < 1):
        raise InputError(f"--threads must be at least 1, got {o['threads']}")
    if o["op_types"] is not None:
        o["op_types"] = [t.strip() for t in o["op_types"] if t.strip()]
        if not o["op_types"]:
            raise InputError("--op-types: give at least one op type, e.g. MatMul,Conv")
    if o["fallback_precision"] is not None and o["fallback_precision"] not in PRECISIONS:
        raise InputError(f"--fallback-precision {o['fallback_precision']}: expected one of {', '.join(PRECISIONS)}")
    if o["optimize_for"] not in OBJECTIVES:
        raise InputError(f"--optimize-for {o['optimize_for']}: expected one of {', '.join(OBJECTIVES)}")
    if o["batch_sizes"] is not None:
        sizes = o["batch_sizes"]
        if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 4096 for b in sizes):
            raise InputError(f"--batch-sizes: expected integers from 1 to 4096, got {sizes}")
        o["batch_sizes"] = sorted(set(sizes))
    if o["name"] is not None:
        check_name(o["name"])
        if o["name"] == version.name:
            raise InputError(f"--name {o['name']}: the quantized model needs a name of its own, not its parent's")
    return o




def served_batch_sizes(version: ModelVersion) -> list[int]:
    """1 and the ``max_batch_size`` of the model's config.pbtxt (what it is served with), else 1 and 64."""
    config = version.path.parent / "config.pbtxt"
    try:
        found = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", config.read_text(), re.MULTILINE)
    except OSError:
        found = None
    largest = int(found.group(1)) if found and int(found.group(1)) > 0 else 64
    return sorted({1, min(largest, 4096)})


def quantize(version: ModelVersion, repo: ModelRepository, log: Callable[[str], None] | None = None,
             **options: Any) -> dict:
    """Quantize ``version``'s model.onnx into a new model; returns the report (table included).

    Options (see :data:`DEFAULTS`): ``method`` auto|dynamic|static|weight-only|fp16|qat,
    ``calibration_samples``, ``calibrate`` minmax|entropy|percentile, ``per_channel``, ``format``
    qdq|qoperator (None: qdq, or both for auto), ``tolerance`` (accuracy points, or percent of a
    generator's Frechet distance; None: the check's default), ``name``, ``provider``, ``op_types``,
    ``measure_seconds`` (timing budget per batch size), ``threads`` (onnxruntime intra-op threads
    of the measured sessions), ``batch_sizes`` (None: from config.pbtxt), ``optimize_for``
    served|latency|throughput|size, ``report`` (add the per-layer sensitivity table),
    ``fallback`` (keep the most sensitive layers float when a candidate misses the tolerance),
    ``fallback_precision`` float32|float16 (what those layers compute in; None: float16 on an
    accelerator provider, where its kernels are fast, else float32),
    ``calibration_data`` (an .npz with one array per input) and ``data`` (what quality is measured
    on; see :mod:`.agreement`). Raises :class:`NoCandidateError` (nothing written) when no
    candidate stays within the tolerance.
    """
    log = log or (lambda msg: print(f"dlkit: {msg}", file=sys.stderr))
    o = check_options(version, options)
    info = _check_graph(version)
    from dlkit import Session

    batch_sizes = o["batch_sizes"] or served_batch_sizes(version)
    parent_session = Session(version.onnx_path, o["provider"], threads=o["threads"])
    check = agreement.choose_check(version, repo, parent_session, o["data"], o["calibration_data"])
    tolerance = check.default_tolerance if o["tolerance"] is None else float(o["tolerance"])
    accelerator = parent_session.providers[0] != CPU
    precision = o["fallback_precision"] or ("float16" if accelerator else "float32")
    todo = candidates(info, o["method"], per_channel=o["per_channel"], fmt=o["format"], calibrate=o["calibrate"],
                      op_types=o["op_types"], accelerator=accelerator)
    todo = [qat_candidate(o["qat_epochs"]) if c.method == "qat" else c for c in todo]
    explicit = o["method"] != "auto"

    def session_of(path):
        return Session(path, o["provider"], threads=o["threads"])

    # Inside the repository's staging area, not $TMPDIR: a killed run's files are found and
    # removed by the next one; onnxruntime's own pre.quant.* folders land there too.
    with repo.workspace("quantize") as folder, _tempdir(folder):
        prepared = folder / "prepared.onnx"
        log(f"preparing {version.ref} (quant_pre_process)")
        prep = preprocess(version.onnx_path, prepared)
        if "opset_upgraded" in prep:
            log("upgraded the graph from opset {} to {} for quantization (onnx.version_converter)".format(
                *prep["opset_upgraded"]))
        calibration = None
        if any(c.method in ("static", "qat") for c in todo) or o["report"] or o["fallback"] or not explicit:
            feeds, described = (agreement.calibration_feeds(o["calibration_data"], parent_session,
                                                            o["calibration_samples"])
                                if o["calibration_data"] else check.calibration_feeds(o["calibration_samples"]))
            calibration = Calibration(feeds, {**described, "method": o["calibrate"]})
        built, errors = _build_all(todo, prepared, folder, calibration, explicit, version, log)
        sessions = {PARENT: parent_session}
        quality, outputs = {}, {}
        quality[PARENT], outputs[PARENT] = check.measure(parent_session)
        log(f"measuring the quality of {len(built)} candidate(s) and the parent on {parent_session.providers[0]}")
        for name, path in built.items():
            try:  # a graph onnxruntime cannot load or run is a failed candidate, not a failed command
                sessions[name] = session_of(path)
                quality[name], outputs[name] = check.measure(sessions[name])
            except DlkitError as exc:
                sessions.pop(name, None)
                errors[name] = str(exc)
                if explicit:
                    raise DlkitError(f"{name}: onnxruntime cannot run the quantized graph ({exc})") from None

        def passes(name):
            return name in quality and check.drop(quality[PARENT], quality[name]) <= tolerance + 1e-9

        layers = None
        failing = [c for c in todo if c.name in quality and not passes(c.name) and c.method != "fp16"]
        if o["report"] or (o["fallback"] and failing):
            probe = next((c for c in failing if c.method == "static"), failing[0] if failing else
                         next((c for c in todo if c.method == "static"), todo[0]))
            log(f"measuring per-layer sensitivity ({probe.name}, each quantizable node alone)")
            layers = sensitivity(probe, prepared, folder, calibration, session_of, probe_feeds(calibration),
                                 check.output if hasattr(check, "output") else outputs_name(parent_session))
            if probe.method == "static" and probe.options.get("format") == "qdq" and probe.name in built:
                add_sqnr(layers, prepared, built[probe.name], folder, calibration)
        if o["fallback"] and failing and layers:
            _fallbacks(failing, layers, prepared, folder, calibration, check, quality, outputs, sessions, built,
                       todo, tolerance, session_of, log, precision)
        if not explicit and not any(passes(c.name) for c in todo) and version.has_weights():
            log("no post-training candidate is within the tolerance: trying quantization-aware training")
            extra = qat_candidate(o["qat_epochs"])
            todo.append(extra)
            more, failed = _build_all([extra], prepared, folder, calibration, False, version, log)
            errors.update(failed)
            for name, path in more.items():
                built[name] = path
                sessions[name] = session_of(path)
                quality[name], outputs[name] = check.measure(sessions[name])
        for c in todo:  # the metadata each would be published with, so that its measured size is final
            if c.name in built and c.name in sessions:
                stamp(built[c.name], version, repo, o["name"] or f"{version.name}-{c.suffix}", c)
                sessions[c.name] = session_of(built[c.name])
        log(f"timing {len(sessions)} model(s) at batch sizes {', '.join(map(str, batch_sizes))}, interleaved")
        latency = time_rounds(sessions, {b: check.latency_feeds(b) for b in batch_sizes}, o["measure_seconds"],
                              reference=PARENT)
        sizes = {PARENT: measure.size_on_disk(version.onnx_path)}
        sizes.update({n: built[n].stat().st_size for n in sessions if n != PARENT})
        differences = {n: float(np.abs(out - outputs[PARENT]).mean()) for n, out in outputs.items()}
        rows = _table(todo, check, quality, differences, latency, sizes, errors, tolerance, batch_sizes)
        chosen = select(rows, o["optimize_for"], batch_sizes)
        report = {
            "model": None, "version": None, "parent": {"name": version.name, "version": version.version},
            "method": o["method"], "chosen": chosen["candidate"] if chosen else None,
            "quality": check.kind, "drop_unit": check.unit, "tolerance": tolerance,
            "quality_columns": [list(c) for c in check.columns], "batch_sizes": batch_sizes,
            "optimize_for": o["optimize_for"], "selection": _selection(o["optimize_for"], batch_sizes),
            "providers": sessions[PARENT].providers, "threads": o["threads"], "table": rows,
            "sensitivity": layers, "kept_float": [], "kept_precision": None,
        }
        if chosen is None:
            passing = "could be built" if all(r.get("error") for r in rows if r["candidate"] != PARENT) \
                else f"kept the {check.kind} loss within {tolerance:g} {check.unit}"
            raise NoCandidateError(f"no quantized candidate of {version.ref} {passing}; nothing written "
                                   f"(see the table; a larger --tolerance accepts more loss)", report)
        candidate = next(c for c in todo if c.name == chosen["candidate"])
        report["kept_float"] = list(candidate.options.get("nodes_to_exclude", []))
        if report["kept_float"]:
            report["kept_precision"] = candidate.options.get("kept_precision", "float32")
        largest = max(batch_sizes)
        if chosen[f"latency_b{largest}_ratio"] > 1 + chosen.get("noise", 0):
            log(f"warning: {candidate.name} is {chosen[f'latency_b{largest}_ratio']:.2f}x the parent's latency at "
                f"batch {largest} here (smaller, not faster)")
        out_name = o["name"] or f"{version.name}-{candidate.suffix}"
        check_name(out_name)
        meta = build_meta(version, repo, candidate, o, tolerance, prep, calibration, check, chosen, report, sessions)
        new = publish(repo, version, out_name, f"quantize-{candidate.method}", built[candidate.name], meta,
                      sessions[candidate.name])
    report.update(model=new.name, version=new.version, path=str(new.path))
    return report


def outputs_name(session) -> str:
    """The output compared when a check names none: the first."""
    return session.outputs[0].name


def _check_graph(version: ModelVersion):
    """The graph's info, after refusing what cannot be quantized (no ONNX, float16, int8; a task
    without a quality check is refused by :func:`measure.quality_check`)."""
    if not version.has_onnx():
        raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
    from dlkit import check_external_data

    check_external_data(version.onnx_path)
    info = inspect_graph(version.onnx_path)
    if info.precision == "float16":
        raise InputError(f"model {version.ref} is a float16 model; quantize its float32 parent "
                         f"{parent_ref(version) or 'model'} instead")
    if info.precision == "int8":
        raise InputError(f"model {version.ref} is already quantized (int8); quantize its float32 parent "
                         f"{parent_ref(version) or 'model'} instead")
    return info


def _selection(objective: str, batch_sizes: list[int]) -> str:
    what = {"served": f"the geometric mean of the latency ratios at batch sizes {batch_sizes}",
            "latency": f"the latency at batch {min(batch_sizes)}",
            "throughput": f"the latency at batch {max(batch_sizes)}", "size": "the size on disk"}[objective]
    return (f"the best {what} among the candidates within the tolerance; candidates within the measured "
            f"noise of the best are a tie, which the smallest file wins, then the closest outputs")


def _fallbacks(failing, layers, prepared, folder, calibration, check, quality, outputs, sessions, built, todo,
               tolerance, session_of, log, precision) -> None:
    """Per-layer fallback for the first failing candidate of each method and format (in place)."""
    seen = set()
    for c in failing:
        key = (c.method, c.options.get("format"))
        if key in seen or len(seen) >= MAX_FALLBACKS:
            continue
        seen.add(key)

        def measured(path):  # a measurement of its own per graph: a later trial must not overwrite it
            session = session_of(path)
            q, out = check.measure(session)
            return check.drop(quality[PARENT], q) <= tolerance + 1e-9, {"q": q, "out": out, "session": session}

        result = fallback(c, layers, prepared, folder, calibration, measured, log, precision)
        if result is None:
            continue
        trial, path, m = result
        todo.append(trial)
        built[trial.name] = path
        quality[trial.name], outputs[trial.name], sessions[trial.name] = m["q"], m["out"], m["session"]


@contextlib.contextmanager
def _tempdir(folder: Path):
    """Point :mod:`tempfile` (which onnxruntime's quantizer uses) at ``folder`` meanwhile."""
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


def _build_all(todo: list[Candidate], prepared: Path, folder: Path, calibration, explicit: bool, version,
               log) -> tuple[dict[str, Path], dict[str, str]]:
    """Build every candidate into ``folder``: (paths built, errors of those that failed)."""
    built: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for c in todo:
        log(f"building {c.name}" + (f" ({c.why})" if c.why else ""))
        path = folder / f"{c.name}.onnx"
        try:
            if c.method == "qat":
                from .qat import build_qat

                build_qat(version, c, path, calibration, log)
            else:
                build(c, prepared, path, calibration)
            built[c.name] = path
        except Exception as exc:  # onnxruntime's quantizers raise anything; auto moves on
            errors[c.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if explicit:
                raise DlkitError(f"{c.name} quantization of {version.ref} failed: {errors[c.name]}") from exc
    return built, errors


def _table(todo: list[Candidate], check, quality: dict, differences: dict, latency: dict, sizes: dict,
           errors: dict, tolerance: float, batch_sizes: list[int]) -> list[dict]:
    """One row per model: the parent first, then each candidate, with ratios to the parent; per batch
    size the latency (median of the round minimums), its ratio and its relative spread."""
    def row(name, method, options, why):
        q, base = quality[name], quality[PARENT]
        r = {"candidate": name, "method": method, "options": options, "why": why, **q,
             "drop": round(check.drop(base, q), 6), "output_difference": differences[name],
             "size_bytes": int(sizes[name]), **check.ratios(base, q), "size_ratio": sizes[name] / sizes[PARENT],
             "passed": None, "chosen": False, "error": None}
        for b in batch_sizes:
            t, ref = latency[name][b], latency[PARENT][b]
            r.update({f"latency_b{b}_ms": t["ms"], f"latency_b{b}_ratio": t["ms"] / ref["ms"],
                      f"latency_b{b}_spread": t["spread"], f"latency_b{b}_rounds": t["rounds"],
                      f"latency_b{b}_stable": t["stable"]})
        return r

    rows = [row(PARENT, "parent", {}, "")]
    for c in todo:
        if c.name in errors or c.name not in latency:
            rows.append({"candidate": c.name, "method": c.method, "options": c.options, "why": c.why,
                         "passed": False, "chosen": False, "error": errors.get(c.name, "not measured")})
            continue
        r = row(c.name, c.method, c.options, c.why)
        r["passed"] = r["drop"] <= tolerance + 1e-9
        rows.append(r)
    return rows
