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

import json
import math
import platform
import sys
import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dlkit import __version__
from dlkit import DlkitError, InputError
from dlkit import ModelRepository, ModelVersion, check_name

from . import agreement, measure
from .graph import inspect_graph, preprocess, set_metadata
from .methods import CALIBRATIONS, FORMATS, METHODS, Calibration, Candidate, build, candidates

DEFAULTS = {
    "method": "auto", "calibration_samples": 256, "calibrate": "minmax", "per_channel": None, "format": None,
    "tolerance": None, "name": None, "provider": "auto", "op_types": None, "measure_seconds": 2.0, "threads": None,
    "calibration_data": None, "data": None,
}
PARENT = "float32"
TIE = 0.05  # latencies this close count as equal
CPU = "CPUExecutionProvider"


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
    if o["name"] is not None:
        check_name(o["name"])
        if o["name"] == version.name:
            raise InputError(f"--name {o['name']}: the quantized model needs a name of its own, not its parent's")
    return o


def quantize(version: ModelVersion, repo: ModelRepository, log: Callable[[str], None] | None = None,
             **options: Any) -> dict:
    """Quantize ``version``'s model.onnx into a new model; returns the report (table included).

    Options (see :data:`DEFAULTS`): ``method`` auto|dynamic|static|fp16, ``calibration_samples``,
    ``calibrate`` minmax|entropy|percentile, ``per_channel``, ``format`` qdq|qoperator (None:
    qdq, or both for auto), ``tolerance`` (accuracy points, or percent of a generator's
    Frechet distance; None: the check's default), ``name``, ``provider``, ``op_types``,
    ``measure_seconds`` (timing per batch size), ``threads`` (onnxruntime intra-op threads of
    the measured sessions; None: onnxruntime's own choice), ``calibration_data`` (an .npz with one
    array per input) and ``data`` (what quality is measured on; see :mod:`.agreement`). Raises :class:`NoCandidateError` (nothing
    written) when no candidate stays within the tolerance.
    """
    log = log or (lambda msg: print(f"dlkit: {msg}", file=sys.stderr))
    o = check_options(version, options)
    if not version.has_onnx():
        raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
    from dlkit import check_external_data

    check_external_data(version.onnx_path)
    info = inspect_graph(version.onnx_path)
    if info.precision == "float16":
        raise InputError(f"model {version.ref} is a float16 model; quantize its float32 parent "
                         f"{_parent_ref(version) or 'model'} instead")
    if info.precision == "int8":
        raise InputError(f"model {version.ref} is already quantized (int8); quantize its float32 parent "
                         f"{_parent_ref(version) or 'model'} instead")
    from dlkit import Session

    parent_session = Session(version.onnx_path, o["provider"], threads=o["threads"])
    check = agreement.choose_check(version, repo, parent_session, o["data"], o["calibration_data"])
    tolerance = check.default_tolerance if o["tolerance"] is None else float(o["tolerance"])
    todo = candidates(info, o["method"], per_channel=o["per_channel"], fmt=o["format"], calibrate=o["calibrate"],
                      op_types=o["op_types"], accelerator=parent_session.providers[0] != CPU)

    # Inside the repository's staging area, not $TMPDIR: a killed run's files are found and
    # removed by the next one; onnxruntime's own pre.quant.* folders land there too.
    with repo.workspace("quantize") as folder, _tempdir(folder):
        prepared = folder / "prepared.onnx"
        log(f"preparing {version.ref} (quant_pre_process)")
        prep = preprocess(version.onnx_path, prepared)
        calibration = None
        if any(c.method == "static" for c in todo):
            feeds, described = (agreement.calibration_feeds(o["calibration_data"], parent_session,
                                                            o["calibration_samples"])
                                if o["calibration_data"] else check.calibration_feeds(o["calibration_samples"]))
            calibration = Calibration(feeds, {**described, "method": o["calibrate"]})
        explicit = o["method"] != "auto"
        built, errors = _build_all(todo, prepared, folder, calibration, explicit, version, log)
        for c in todo:  # the metadata each would be published with, so that its measured size is final
            if c.name in built:
                _stamp(built[c.name], version, repo, o["name"] or f"{version.name}-{c.suffix}", c)
        sessions = {PARENT: parent_session}
        quality, outputs = {}, {}
        quality[PARENT], outputs[PARENT] = check.measure(parent_session)
        log(f"measuring quality and latency of {len(built)} candidate(s) and the parent "
            f"on {parent_session.providers[0]}")
        for name, path in built.items():
            try:  # a graph onnxruntime cannot load or run is a failed candidate, not a failed command
                session = Session(path, o["provider"], threads=o["threads"])
                quality[name], outputs[name] = check.measure(session)
                sessions[name] = session
            except DlkitError as exc:
                errors[name] = str(exc)
                if explicit:
                    raise DlkitError(f"{name}: onnxruntime cannot run the quantized graph ({exc})") from None
        latency = measure.time_sessions(sessions, {b: check.latency_feeds(b) for b in measure.BATCH_SIZES},
                                        o["measure_seconds"], reference=PARENT)
        sizes = {PARENT: measure.size_on_disk(version.onnx_path)}
        sizes.update({n: built[n].stat().st_size for n in sessions if n != PARENT})
        differences = {n: float(np.abs(out - outputs[PARENT]).mean()) for n, out in outputs.items()}
        rows = _table(todo, check, quality, differences, latency, sizes, errors, tolerance)
        chosen = _select(rows)
        report = {
            "model": None, "version": None, "parent": {"name": version.name, "version": version.version},
            "method": o["method"], "chosen": chosen["candidate"] if chosen else None,
            "quality": check.kind, "drop_unit": check.unit, "tolerance": tolerance,
            "quality_columns": [list(c) for c in check.columns],
            "providers": sessions[PARENT].providers, "threads": o["threads"], "table": rows,
        }
        if chosen is None:
            passing = "could be built" if all(r.get("error") for r in rows if r["candidate"] != PARENT) \
                else f"kept the {check.kind} loss within {tolerance:g} {check.unit}"
            raise NoCandidateError(f"no quantized candidate of {version.ref} {passing}; nothing written "
                                   f"(see the table; a larger --tolerance accepts more loss)", report)
        candidate = next(c for c in todo if c.name == chosen["candidate"])
        if chosen["latency_b64_ratio"] is not None and chosen["latency_b64_ratio"] > 1:
            log(f"warning: {candidate.name} is {chosen['latency_b64_ratio']:.2f}x the parent's latency at batch 64 "
                f"here (smaller, not faster)")
        out_name = o["name"] or f"{version.name}-{candidate.suffix}"
        check_name(out_name)
        meta = _meta(version, repo, candidate, o, tolerance, prep, calibration, check, chosen, report, sessions)
        new = _write(repo, version, out_name, f"quantize-{candidate.method}", built[candidate.name], meta,
                     sessions[candidate.name])
    report.update(model=new.name, version=new.version, path=str(new.path))
    return report


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
            build(c, prepared, path, calibration)
            built[c.name] = path
        except Exception as exc:  # onnxruntime's quantizers raise anything; auto moves on
            errors[c.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if explicit:
                raise DlkitError(f"{c.name} quantization of {version.ref} failed: {errors[c.name]}") from exc
    return built, errors


def _table(todo: list[Candidate], check, quality: dict, differences: dict, latency: dict, sizes: dict,
           errors: dict, tolerance: float) -> list[dict]:
    """One row per model: the parent first, then each candidate, with ratios to the parent."""
    def row(name, method, options, why):
        q, base = quality[name], quality[PARENT]
        return {
            "candidate": name, "method": method, "options": options, "why": why, **q,
            "drop": round(check.drop(base, q), 6), "output_difference": differences[name],
            "size_bytes": int(sizes[name]), "latency_b1_ms": latency[name][1], "latency_b64_ms": latency[name][64],
            **check.ratios(base, q), "size_ratio": sizes[name] / sizes[PARENT],
            "latency_b1_ratio": latency[name][1] / latency[PARENT][1],
            "latency_b64_ratio": latency[name][64] / latency[PARENT][64], "passed": None, "chosen": False, "error": None,
        }

    rows = [row(PARENT, "parent", {}, "")]
    for c in todo:
        if c.name in errors:
            rows.append({"candidate": c.name, "method": c.method, "options": c.options, "why": c.why,
                         "passed": False, "chosen": False, "error": errors[c.name]})
            continue
        r = row(c.name, c.method, c.options, c.why)
        r["passed"] = r["drop"] <= tolerance + 1e-9
        rows.append(r)
    return rows


def _select(rows: list[dict]) -> dict | None:
    """The fastest passing candidate at batch 64. Latencies within 5% of the fastest count as a
    tie (timing noise on a shared machine), which the candidate whose outputs are closest to the
    parent's wins: a finer measure of what quantization changed than accuracy on a few hundred
    samples."""
    passing = [r for r in rows if r.get("passed")]
    if not passing:
        return None
    fastest = min(r["latency_b64_ms"] for r in passing)
    near = [r for r in passing if r["latency_b64_ms"] <= fastest * (1 + TIE)]
    best = min(near, key=lambda r: (r["output_difference"], r["size_bytes"]))
    best["chosen"] = True
    return best


def lineage(version: ModelVersion, repo: ModelRepository) -> list[dict]:
    """The chain that led to ``version``, oldest first, ``version`` last: name, version, method."""
    entry = {"name": version.name, "version": version.version, "method": version.meta.get("method")}
    recorded = version.meta.get("lineage")
    if isinstance(recorded, list):
        return [*recorded, entry]
    chain = [entry]
    seen = {(version.name, version.version)}
    parent = version.meta.get("parent")
    while isinstance(parent, dict) and parent.get("name") and len(chain) < 100:
        key = (parent["name"], parent.get("version"))
        if key in seen:
            break
        seen.add(key)
        try:
            ancestor = repo.resolve(f"{parent['name']}:{parent['version']}")
            method, parent = ancestor.meta.get("method"), ancestor.meta.get("parent")
        except (InputError, KeyError, TypeError):
            method, parent = None, None  # gone from the repository: the chain stops here
        chain.insert(0, {"name": key[0], "version": key[1], "method": method})
    return chain


def _parent_ref(version: ModelVersion) -> str | None:
    parent = version.meta.get("parent")
    return f"{parent['name']}:{parent['version']}" if isinstance(parent, dict) and parent.get("name") else None


INHERITED = ("arch", "plugin", "task", "hparams", "input_spec", "labels", "num_classes", "data", "params")


def _meta(version, repo, candidate, o, tolerance, prep, calibration, check, chosen, report, sessions) -> dict:
    import onnx
    import onnxruntime

    return {
        "metrics": check.metrics(chosen),
        "lineage": lineage(version, repo),
        "quantization": {
            "method": candidate.method, "candidate": candidate.name, "options": candidate.options,
            "requested": o["method"], "auto": o["method"] == "auto",
            "selection": f"the fastest at batch 64 among the candidates within the tolerance "
                         f"(within {TIE:.0%} of it: the one whose outputs differ least from the parent's)",
            "tolerance": tolerance, "quality": check.kind, "drop_unit": check.unit, "preprocess": prep,
            "calibration": calibration.description if calibration and candidate.method == "static" else None,
            "providers": sessions[PARENT].providers,
            "measured_on": {"machine": platform.machine(), "processor": platform.processor() or None,
                            "system": platform.system()},
        },
        "measurements": {"providers": report["providers"], "threads": o["threads"], "table": report["table"]},
        "versions": {"dlkit": __version__, "python": platform.python_version(), "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }


def _stamp(path: Path, parent: ModelVersion, repo: ModelRepository, name: str, candidate: Candidate) -> None:
    """Give a built graph the parent's ONNX metadata (labels, input spec...), updated for the new model."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in onnx.load(str(parent.onnx_path), load_external_data=False).metadata_props}
    props.update({k: json.dumps(v) for k, v in {
        "model": name, "version": repo.next_version(name), "parent": {"name": parent.name, "version": parent.version},
        "method": f"quantize-{candidate.method}", "quantization": candidate.name,
    }.items()})
    set_metadata(model, props)
    onnx.save(model, str(path))


def _write(repo: ModelRepository, parent: ModelVersion, name: str, method: str, onnx_file: Path, meta: dict,
           session) -> ModelVersion:
    """Publish model.onnx and meta.json as a model derived from ``parent``, then config.pbtxt."""
    import hashlib

    import onnx

    from dlkit import derive, write_bytes

    data = onnx_file.read_bytes()
    opset = next((o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx")), None)
    # What a quantized model is stays its parent's; how it was trained ("trainer", "train") does not apply.
    with derive(repo, parent, method, name, inherit=INHERITED) as new:
        write_bytes(new.path / "model.onnx", data)
        new.meta.update(meta, onnx={
            "opset": opset, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "inputs": [i.as_dict() for i in session.inputs], "outputs": [o.as_dict() for o in session.outputs],
            "source": "dlkit quantize",
        })
    version = new.version
    try:
        from dlkit import write_triton_config

        write_triton_config(version)
    except Exception as exc:  # the model is complete without it; Triton users are told why
        print(f"dlkit: warning: no config.pbtxt for {version.ref}: {exc}", file=sys.stderr)
    return version
