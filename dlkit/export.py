"""torch -> ONNX: one self-contained model.onnx per version, checked against torch before it is written.

``export_onnx(version)`` rebuilds the model from its safetensors weights, exports it with torch's
ONNX exporter, checks the graph with ``onnx.checker``, runs it in onnxruntime beside torch on
real samples of the model's data set and on random inputs at batch sizes 1 and 37, and only
then moves ``model.onnx`` into the version folder (and writes the Triton ``config.pbtxt``). A
graph whose outputs differ from torch's by more than :data:`TOLERANCE` is never written.

Classifiers export one input ``input`` and two outputs, ``logits`` and ``probabilities``
(softmax). An architecture registered with ``export=`` returns an :class:`OnnxGraph` instead,
saying what to export (the GAN exports its generator).

torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .checkpoint import atomic_path, write_bytes
from .errors import DlkitError, InputError
from .repository import ModelVersion

TOLERANCE = 1e-4  # max abs difference between onnxruntime and torch outputs (float32)
PARITY_BATCHES = (1, 37)  # 37: odd, and different from any batch size used while tracing
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace with 2
TRITON_MAX_BATCH = 64
EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_MIN_OPSET = 18  # the dynamo exporter builds opset 18+ graphs; older ones come from the tracer
TRACER_OPSET = 17  # the tracer's default here: widely supported by onnxruntime and Triton builds
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
    "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}


@dataclass
class OnnxGraph:
    """What to export and how to feed it: returned by a ModelSpec's ``export(module, meta)``.

    :param module: the ``torch.nn.Module`` to export (eval mode); its ``forward`` takes the
        inputs positionally, in the order of ``example_inputs``.
    :param example_inputs: ``{ONNX input name: tensor}`` used to trace the graph, batch first.
        Use a batch of 2 or more: the tracer specialises sizes 0 and 1.
    :param output_names: the ONNX names of ``forward``'s outputs, in order.
    :param dynamic_axes: ``{input or output name: {axis: axis name}}``. Axis 0 of every input
        and output is the dynamic ``batch`` axis unless listed otherwise; list further dynamic
        axes here (``{"input": {1: "sequence"}}``).
    :param metadata: extra ONNX ``metadata_props`` (values stored as JSON), merged over dlkit's.
    :param sample: ``sample(batch, generator) -> {input name: tensor}``: fresh random inputs for
        the parity check (``generator`` is a seeded ``torch.Generator``). By default every float
        input is drawn from a standard normal with the example's shape and the given batch
        size, which is what a generator's latent noise is.
    """

    module: Any
    example_inputs: dict[str, Any]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    sample: Callable[[int, Any], dict[str, Any]] | None = None

    def axes(self) -> dict[str, dict[int, str]]:
        """Every input's and output's dynamic axes, the batch axis included."""
        out = {}
        for name in [*self.example_inputs, *self.output_names]:
            out[name] = {0: "batch", **self.dynamic_axes.get(name, {})}
        return out

    def random_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Fresh inputs of ``batch`` samples, as float32 numpy arrays (see ``sample``)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        if self.sample is not None:
            drawn = self.sample(batch, gen)
        else:
            drawn = {}
            for name, ex in self.example_inputs.items():
                if not ex.is_floating_point():
                    raise InputError(f"export: input {name!r} is not a float tensor; the architecture's "
                                     f"OnnxGraph must give a sample() for the parity check")
                drawn[name] = torch.randn((batch, *ex.shape[1:]), generator=gen, dtype=ex.dtype)
        return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in drawn.items()}


# -- the graph of a stored version -----------------------------------------------------------------
def classifier_graph(module, meta: dict) -> OnnxGraph:
    """The default export of a classifier: ``input`` -> ``logits``, ``probabilities``.

    Sequence inputs also get a dynamic ``sequence`` axis (axis 1), so recurrent models take
    sequences of any length.
    """
    import torch

    spec = meta["input_spec"]
    example = torch.from_numpy(random_in_range(spec, EXAMPLE_BATCH, np.random.default_rng(0)))
    axes = {"input": {1: "sequence"}} if spec["kind"] == "sequence" else {}
    return OnnxGraph(with_probabilities(module), {"input": example}, ["logits", "probabilities"], axes)


def with_probabilities(module):
    """Wrap a logits module so the graph also outputs softmax probabilities."""
    import torch

    class ClassifierOutputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return logits, torch.softmax(logits, dim=-1)

    return ClassifierOutputs(module).eval()


def export_graph(version: ModelVersion) -> OnnxGraph:
    """Load ``version`` into torch and describe its export (the architecture's own, or a classifier's)."""
    from .models import load_model

    module, spec = load_model(version)
    meta = version.meta
    if spec.export is not None:
        graph = spec.export(module, meta)
        if not isinstance(graph, OnnxGraph):
            raise DlkitError(f"architecture {spec.name!r} (plugin {spec.plugin!r}): export() returned "
                             f"{type(graph).__name__}, expected dlkit.export.OnnxGraph")
        graph.module.eval()
        return graph
    if meta.get("task", "classification") != "classification":
        raise InputError(f"model {version.ref} is a {meta.get('task')} model and architecture {spec.name!r} "
                         f"registers no export(): nothing to export")
    return classifier_graph(module, meta)


def random_in_range(input_spec: dict, batch: int, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
    """Uniform random float32 inputs inside the spec's value range (noise inputs: standard normal)."""
    shape = list(input_spec["shape"])
    if length is not None:
        shape[0] = length
    if input_spec.get("kind") == "noise":
        return rng.standard_normal((batch, *shape)).astype(np.float32)
    lo, hi = input_spec.get("range") or [0.0, 1.0]
    return rng.uniform(lo, hi, size=(batch, *shape)).astype(np.float32)


# -- parity ---------------------------------------------------------------------------------------
@dataclass
class ParityCase:
    """One set of graph inputs the runtimes are compared on."""

    name: str
    feeds: dict[str, np.ndarray]


def parity_cases(meta: dict, graph: OnnxGraph | None = None, batch_sizes=PARITY_BATCHES,
                 seed: int = 0) -> list[ParityCase]:
    """The inputs an export is checked on: real samples and random ones, at each batch size.

    Classifiers: the first samples of the model's test split (reloaded from ``meta["data"]``;
    skipped with a warning when the data cannot be loaded), and uniform random inputs inside
    the input spec's range; sequence models also at a second sequence length. Other graphs:
    ``graph.random_inputs``. Also for compressors comparing two ONNX files (``graph=None``).
    """
    cases = []
    spec = meta.get("input_spec") or {}
    name = next(iter(graph.example_inputs)) if graph else "input"
    if meta.get("task", "classification") == "classification":
        x = data_samples(meta, max(batch_sizes))
        if x is not None:
            cases += [ParityCase(f"data batch {b}", {name: np.resize(x, (b, *x.shape[1:]))}) for b in batch_sizes]
        rng = np.random.default_rng(seed)
        cases += [ParityCase(f"random batch {b}", {name: random_in_range(spec, b, rng)}) for b in batch_sizes]
        if spec.get("kind") == "sequence":
            other = int(spec["shape"][0]) + 5
            cases += [ParityCase(f"random batch {b} length {other}", {name: random_in_range(spec, b, rng, other)})
                      for b in batch_sizes]
    else:
        if graph is None:
            raise InputError("parity_cases: a generative model needs its OnnxGraph to draw inputs")
        cases += [ParityCase(f"random batch {b}", graph.random_inputs(b, seed + i)) for i, b in enumerate(batch_sizes)]
    return cases


def data_samples(meta: dict, n: int) -> np.ndarray | None:
    """The first ``n`` test samples of the data set recorded in meta.json, or None (with a warning)."""
    from .data import load_dataset

    recorded = meta.get("data") or {}
    if "source" not in recorded:
        return None
    try:
        ds = load_dataset(recorded["source"], recorded.get("options", {}), recorded.get("seed", 0))
    except DlkitError as exc:
        print(f"dlkit: warning: parity check without real samples ({exc})", file=sys.stderr)
        return None
    return ds.x_test[:n].astype(np.float32)


def compare(reference: Callable[[dict], dict], candidate: Callable[[dict], dict],
            cases: list[ParityCase]) -> dict:
    """Run both on every case; the max absolute difference overall, per output and per case.

    ``reference`` and ``candidate`` map ``{input name: array}`` to ``{output name: array}``
    (``Session.run`` is one; :func:`torch_runner` makes one of a module). Outputs missing from
    the candidate are an error.
    """
    per_output: dict[str, float] = {}
    per_case = []
    for case in cases:
        want, got = reference(case.feeds), candidate(case.feeds)
        worst = 0.0
        for key, value in want.items():
            if key not in got:
                raise DlkitError(f"parity check: the graph has no output {key!r} (it has {', '.join(got)})")
            a, b = np.asarray(value, np.float64), np.asarray(got[key], np.float64)
            if a.shape != b.shape:
                raise DlkitError(f"parity check ({case.name}): output {key!r} has shape {b.shape}, expected {a.shape}")
            # Equal values (infinities included) and NaN in both count as no difference;
            # NaN on one side only as an infinite one.
            d = np.where(a == b, 0.0, np.abs(a - b))
            d[np.isnan(a) & np.isnan(b)] = 0.0
            diff = float(np.nan_to_num(d, nan=np.inf).max()) if d.size else 0.0
            per_output[key] = max(per_output.get(key, 0.0), diff)
            worst = max(worst, diff)
        per_case.append({"case": case.name, "max_abs_diff": worst})
    return {"max_abs_diff": max(per_output.values(), default=0.0), "outputs": per_output, "cases": per_case}


def torch_runner(graph: OnnxGraph) -> Callable[[dict], dict]:
    """``feeds -> outputs`` through the graph's torch module (CPU, inference mode)."""
    import torch

    def run(feeds: dict) -> dict:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in graph.example_inputs]
        with torch.inference_mode():
            out = graph.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.detach().float().numpy() for name, o in zip(graph.output_names, out)}

    return run


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
        except Exception as exc:  # each exporter raises its own error types
            failures.append(f"{name} exporter failed: {_first_line(exc)}")
            continue
        got_opset = default_opset(proto)
        if opset is not None and got_opset != opset:
            failures.append(f"{name} exporter gave opset {got_opset}, not {opset}")
            continue
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **props})
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
            failures.append(f"{name} exporter: onnx.checker: {_first_line(exc)}")
            continue
        try:
            parity, session = _check_and_write(version, proto, reference, cases, tolerance)
        except ParityError as exc:
            failures.append(f"{name} exporter: {exc}")
            continue
        except DlkitError as exc:  # onnxruntime cannot load or run what the exporter wrote
            failures.append(f"{name} exporter: {exc}")
            continue
        return _finish(version, session, parity, name, got_opset, tolerance, len(cases), started, failures)
    raise DlkitError(f"export of {version.ref} failed, nothing written: {'; '.join(failures)}")


def _check_and_write(version, proto, reference, cases, tolerance) -> tuple[dict, Any]:
    """Write the graph to a temporary file beside model.onnx, run the parity check on exactly
    those bytes, and move it in only when it passes; returns (parity, session)."""
    from .runtime import Session

    with atomic_path(version.onnx_path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        # CPU on purpose: the check is about the export, not about a GPU's float behaviour.
        session = Session(tmp, "cpu")
        parity = compare(reference, session.run, cases)
        if parity["max_abs_diff"] > tolerance:
            raise ParityError(parity, tolerance)  # atomic_path drops the temporary file
    session.path = version.onnx_path
    return parity, session


class ParityError(DlkitError):
    """onnxruntime's outputs differ from the reference by more than the tolerance."""

    def __init__(self, parity: dict, tolerance: float):
        worst = max(parity["cases"], key=lambda c: c["max_abs_diff"])
        super().__init__(f"max abs difference {parity['max_abs_diff']:.3g} > {tolerance:g} (worst on {worst['case']})")
        self.parity = parity


def _finish(version, session, parity, exporter, opset, tolerance, n_cases, started, failures) -> dict:
    import onnx
    import torch

    data = version.onnx_path.read_bytes()
    signature = {"inputs": [i.as_dict() for i in session.inputs], "outputs": [o.as_dict() for o in session.outputs]}
    record = {
        "opset": opset, "exporter": exporter, "max_abs_diff": parity["max_abs_diff"], "tolerance": tolerance,
        "checks": n_cases, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **signature,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"dlkit": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
    }
    version.update_meta(onnx=record)
    config = write_triton_config(version)
    for note in failures:  # an auto export that needed its fallback says why
        print(f"dlkit: note: {note}", file=sys.stderr)
    return {"model": version.name, "version": version.version, "path": str(version.onnx_path),
            "config": str(config), **{k: record[k] for k in ("opset", "exporter", "max_abs_diff", "tolerance",
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


def default_opset(proto) -> int:
    """The opset of the default ONNX domain a model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def onnx_metadata(version: ModelVersion, graph: OnnxGraph) -> dict[str, str]:
    """The ``metadata_props`` a runtime needs without torch (JSON strings)."""
    import json

    from .predict import input_preprocessing

    meta = version.meta
    spec = meta.get("input_spec") or {}
    props = {
        "dlkit_version": __version__, "model": version.name, "version": version.version,
        "arch": meta.get("arch"), "task": meta.get("task", "classification"), "labels": meta.get("labels"),
        "input_spec": spec, "preprocessing": input_preprocessing(spec) if spec else None,
        "parent": meta.get("parent"), "method": meta.get("method"),
        **graph.metadata,
    }
    return {k: json.dumps(v) for k, v in props.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# -- Triton ---------------------------------------------------------------------------------------
def write_triton_config(version: ModelVersion, max_batch_size: int = TRITON_MAX_BATCH) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` for Triton's onnxruntime backend; returns its path.

    The batch dimension is implicit (``max_batch_size`` > 0), so ``dims`` leave it out and
    other dynamic axes are -1. Triton loads the versions listed under ``version_policy``:
    those that have a model.onnx with the same inputs and outputs as this one.
    """
    record = version.meta["onnx"]
    folder = version.path.parent
    versions = []
    for p in sorted(folder.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        if not (p.name.isdigit() and (p / "model.onnx").is_file()):
            continue
        other = version if p == version.path else ModelVersion(version.name, int(p.name), p)
        try:
            same = {k: other.meta.get("onnx", {}).get(k) for k in ("inputs", "outputs")} == \
                   {k: record[k] for k in ("inputs", "outputs")}
        except DlkitError:
            same = False
        if same:
            versions.append(int(p.name))
    text = triton_config(version.name, record["inputs"], record["outputs"], max_batch_size, versions)
    path = folder / "config.pbtxt"
    write_bytes(path, text.encode())
    return path


def triton_config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                  versions: list[int]) -> str:
    """A Triton model configuration (protobuf text format) for an onnxruntime model."""

    def tensors(kind: str, items: list[dict]) -> str:
        blocks = []
        for t in items:
            dtype = TRITON_TYPES.get(t["dtype"])
            if dtype is None:
                raise DlkitError(f"config.pbtxt: {kind} {t['name']!r} has dtype {t['dtype']}, which Triton cannot take")
            dims = ", ".join("-1" if d is None else str(d) for d in t["shape"][1:])
            # A tensor of one value per sample (shape [batch]) is dims [1] reshaped to [] for Triton.
            shape = f"dims: [ {dims} ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
            blocks.append(f'  {{\n    name: "{t["name"]}"\n    data_type: {dtype}\n    {shape}\n  }}')
        return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"

    listed = ", ".join(map(str, versions))
    return (f'# Written by dlkit export onnx: serve this folder with Triton Inference Server too.\n'
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}\n"
            + tensors("input", inputs) + tensors("output", outputs)
            + "dynamic_batching { }\n")
