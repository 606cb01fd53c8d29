"""The quantization methods, on top of ``onnxruntime.quantization``, and the candidates ``auto`` tries.

Every method starts from the graph :func:`~dlkit_quantize.graph.preprocess` prepared:

- ``dynamic``: int8 weights, activations quantized on the fly (``quantize_dynamic``). Applies
  to MatMul (Gemm is rewritten to MatMul + Add first: onnxruntime has no integer Gemm for
  dynamic mode) and LSTM (``DynamicQuantizeLSTM``); onnxruntime has no dynamic GRU kernel, so a
  GRU stays float32 under this method. Conv only when asked for (``op_types``): it becomes
  ConvInteger, which onnxruntime runs far slower than a float Conv on x86 CPUs.
- ``static``: weights and activations int8 with ranges calibrated on the model's training split
  (``quantize_static``), as QDQ (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses
  into integer kernels) or QOperator (QLinearConv, QGemm...). uint8 activations and int8 weights,
  onnxruntime's recommended pairing for x86 CPUs. The ``probabilities`` Softmax stays float32.
  In QDQ form LSTM and GRU weights are stored as int8 and dequantized by DequantizeLinear on
  every call (there is no integer kernel for them: smaller, not faster).
- ``fp16``: float16 weights and arithmetic, float32 inputs and outputs (for GPU providers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlkit import InputError

from .graph import GraphInfo, gemm_to_matmul, quiet

METHODS = ("auto", "dynamic", "static", "weight-only", "fp16", "qat")
ACTIVATIONS = ("uint8", "int8")
WEIGHT_BITS = (4, 8)
CALIBRATIONS = ("minmax", "entropy", "percentile")
FORMATS = ("qdq", "qoperator")
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM")
RECURRENT_OPS = ("LSTM", "GRU")
# Outputs a caller reads as probabilities stay float: quantizing a Softmax costs accuracy and
# saves nothing measurable.
STATIC_SKIP_OPS = ("Softmax", "ArgMax")
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class Candidate:
    """One way to quantize a graph: a method and its options."""

    name: str
    method: str  # dynamic | static | fp16
    options: dict = field(default_factory=dict)
    why: str = ""

    @property
    def suffix(self) -> str:
        if self.method == "qat":
            return "int8"
        if self.method == "weight-only":
            return f"int{self.options.get('bits', 4)}"
        return "fp16" if self.method == "fp16" else "int8"


def candidates(info: GraphInfo, method: str, *, per_channel: bool | None, fmt: str | None, calibrate: str,
               op_types: list[str] | None, accelerator: bool) -> list[Candidate]:
    """The candidates for ``method``; for ``auto``, those that make sense for this graph.

    ``auto`` tries dynamic quantization of MatMul/Gemm/LSTM (per channel and per tensor, unless
    ``per_channel`` is given), the same plus Conv when there is one (measured, since ConvInteger
    is slow on most CPUs), static QDQ (and QOperator for graphs without recurrent ops, unless
    ``fmt`` is given) when there is a Conv, MatMul or Gemm, and float16 on accelerator
    providers (onnxruntime's CPU provider runs float16 no faster). ``per_channel`` None means
    per tensor for an explicit dynamic method (onnxruntime's default), per channel for static.
    """
    static_pc = True if per_channel is None else per_channel
    static_options = {"calibrate": calibrate, "per_channel": static_pc}
    if op_types:
        static_options["op_types"] = list(op_types)
    dyn_ops = list(op_types or DYNAMIC_OPS)
    if method == "dynamic":
        return [Candidate("dynamic", "dynamic", {"per_channel": bool(per_channel), "op_types": dyn_ops})]
    if method == "static":
        return [Candidate(f"static-{fmt or 'qdq'}", "static", {"format": fmt or "qdq", **static_options})]
    if method == "fp16":
        return [Candidate("fp16", "fp16", {})]
    if method == "weight-only":
        return [Candidate("weight-only-int4", "weight-only", {"bits": 4})]
    if method == "qat":
        return [qat_candidate(3)]
    if method != "auto":
        raise InputError(f"unknown quantization method {method!r}: expected one of {', '.join(METHODS)}")
    found: list[Candidate] = []
    recurrent = info.has(*RECURRENT_OPS)
    granularities = [True, False] if per_channel is None else [per_channel]
    if (set(dyn_ops) & {"MatMul", "Gemm", "LSTM", "Conv"}) and info.has(*dyn_ops):
        for pc in granularities:
            found.append(Candidate(f"dynamic-{_granularity(pc)}", "dynamic", {"per_channel": pc, "op_types": dyn_ops},
                                   f"int8 {'/'.join(o for o in dyn_ops if info.has(o))} weights, "
                                   f"activations quantized per call"))
    if info.has("Conv") and not op_types:
        pc = granularities[0]
        found.append(Candidate("dynamic+conv", "dynamic", {"per_channel": pc, "op_types": [*DYNAMIC_OPS, "Conv"]},
                               "also Conv, as ConvInteger"))
    if info.has("Conv", "MatMul", "Gemm") or op_types:
        found.extend(_static_candidates(fmt, recurrent, granularities if per_channel is None else [static_pc],
                                        static_options))
    if info.has("MatMul", "Gemm") and not info.has("Conv") and not recurrent and not op_types:
        for bits in WEIGHT_BITS:
            found.append(Candidate(f"weight-only-int{bits}", "weight-only", {"bits": bits},
                                   f"int{bits} MatMul weights in blocks (MatMulNBits), float activations"))
    if accelerator or not found:
        found.append(Candidate("fp16", "fp16", {}, "float16 weights and arithmetic"))
    return found


# (name suffix, activation type, symmetric activations): onnxruntime's x86 kernels are fastest for
# uint8 activations on some graphs and int8 (symmetric: zero point 0) on others, so auto measures.
ACTIVATION_VARIANTS = (("", "uint8", False), ("-s8", "int8", False), ("-s8sym", "int8", True))


def _static_candidates(fmt, recurrent: bool, granularities: list[bool], static_options: dict) -> list[Candidate]:
    found = []
    for f in [fmt] if fmt else (["qdq"] if recurrent else list(FORMATS)):
        for pc in granularities:
            for suffix, act, sym in ACTIVATION_VARIANTS:
                why = f"int8 weights ({_granularity(pc)}), {act} activations{' (symmetric)' if sym else ''}, calibrated"
                if recurrent and f == "qdq":
                    why += "; recurrent weights stored as int8, dequantized per call"
                options = {"format": f, **static_options, "per_channel": pc}
                if act != "uint8":
                    options.update(activation=act, symmetric=sym)
                name = f"static-{f}{'' if pc else '-per-tensor'}{suffix}"
                found.append(Candidate(name, "static", options, why))
    return found


def qat_candidate(epochs: int) -> Candidate:
    """Fine-tuned with fake quantization, then static QDQ (built by :mod:`dlkit_quantize.qat`)."""
    return Candidate("qat", "qat", {"format": "qdq", "per_channel": True, "epochs": int(epochs)},
                     f"{epochs} epoch(s) of quantization-aware fine-tuning, then static QDQ")


def _granularity(per_channel: bool) -> str:
    return "per-channel" if per_channel else "per-tensor"


def build(candidate: Candidate, prepared: Path, out: Path, calibration=None) -> None:
    """Write ``candidate`` applied to the prepared graph at ``out``. The option ``kept_precision``
    float16 makes the nodes it keeps out of int8 (``nodes_to_exclude``) compute in float16."""
    options = dict(candidate.options)
    kept = options.pop("kept_precision", "float32")
    if candidate.method == "dynamic":
        quantize_dynamic(prepared, out, **options)
    elif candidate.method == "static":
        if calibration is None:
            raise ValueError("static quantization needs calibration data")
        quantize_static(prepared, out, calibration, **options)
    elif candidate.method == "fp16":
        convert_fp16(prepared, out)
    elif candidate.method == "qat":
        raise ValueError("QAT candidates are built from the torch model (dlkit_quantize.qat.build_qat)")
    elif candidate.method == "weight-only":
        quantize_weight_only(prepared, out, **options)
    else:
        raise ValueError(f"unknown method {candidate.method!r}")
    if kept == "float16":
        keep_in_float16(out, options.get("nodes_to_exclude", ()))


def quantize_dynamic(src: Path, dst: Path, *, op_types, per_channel: bool, nodes_to_exclude=()) -> None:
    """onnxruntime's dynamic quantization of ``op_types``, Gemm rewritten to MatMul + Add first."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    model = onnx.load(str(src))
    if "Gemm" in op_types:
        gemm_to_matmul(model)
    ops = sorted({"MatMul" if op == "Gemm" else op for op in op_types})
    with quiet():
        ort_quantize_dynamic(model, str(dst), op_types_to_quantize=ops, per_channel=per_channel,
                             weight_type=QuantType.QInt8, nodes_to_exclude=_excluded(model, nodes_to_exclude))


def _excluded(model, nodes) -> list[str]:
    """Node names to keep in float, also under the names :func:`gemm_to_matmul` gave a Gemm."""
    names = set(nodes)
    return [n.name for n in model.graph.node if _named(n.name, names)]


def _named(name: str, names: set[str]) -> bool:
    """Whether node ``name`` is one of ``names``, also under the names :func:`gemm_to_matmul` gives
    a Gemm's MatMul and Add."""
    return name in names or name.removesuffix("_MatMul") in names or name.removesuffix("_Add") in names


def quantize_weight_only(src: Path, dst: Path, *, bits: int, block_size: int = 32, nodes_to_exclude=()) -> None:
    """Weight-only int4/int8 MatMul (``MatMulNBits``, onnxruntime's MatMulNBitsQuantizer): the
    weights stored in blocks of ``block_size`` with a scale each, the activations left float."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    gemm_to_matmul(model)
    with quiet():
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4 if bits == 4 else None,
                                         nodes_to_exclude=_excluded(model, nodes_to_exclude))
        quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        raise ValueError("no MatMul with a constant weight of at least one block: nothing to quantize")
    onnx.save(quantized, str(dst))


def quantize_static(src: Path, dst: Path, calibration, *, format: str, calibrate: str, per_channel: bool,
                    op_types=None, activation: str = "uint8", symmetric: bool = False, nodes_to_exclude=(),
                    nodes_to_quantize=None) -> None:
    """onnxruntime's static quantization with ``calibration`` (a ``Calibration``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    qdq = format == "qdq"
    if op_types is None:
        known = set(QDQRegistry if qdq else QLinearOpsRegistry) - set(STATIC_SKIP_OPS)
        if qdq:
            known |= set(RECURRENT_OPS)  # weights stored as int8 + DequantizeLinear
        present = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
        op_types = sorted(known & present)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate]
    with quiet():
        ort_quantize_static(
            str(src), str(dst), calibration.reader(), quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            op_types_to_quantize=list(op_types), per_channel=per_channel,
            activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=list(nodes_to_exclude),
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize is not None else None,
            extra_options={"ActivationSymmetric": bool(symmetric)},
        )


def keep_in_float16(path: Path, nodes) -> None:
    """Rewrite the quantized graph at ``path`` so that ``nodes`` (the ones quantization kept out
    of int8) compute in float16: their float32 weights stored as float16, a Cast to float16 on
    each float activation they read and a Cast back after each output that another node or the
    graph's output reads (mixed int8 + float16, for
    providers with fast float16 kernels). Every other node and tensor is left exactly as it was.
    (onnxruntime's ``convert_float_to_float16`` with all other nodes blocked does not do that: it
    converts the graph's tensors and casts back around blocked nodes, so the int8 path's inputs
    went through float16 and a dozen extra Casts.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    names = set(nodes)
    keep = {n.name for n in graph.node if _named(n.name, names)}
    if not keep:
        raise ValueError(f"none of the nodes to keep in float16 is in the graph: {sorted(nodes)}")
    inferred = onnx.shape_inference.infer_shapes(model).graph
    float32 = {v.name for v in [*inferred.input, *inferred.value_info, *inferred.output]
               if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    initializers = {t.name: t for t in graph.initializer}
    # float32 tensors someone besides the kept nodes reads: a kept node's output is cast back for them
    read_as_float32 = {n for node in graph.node if node.name not in keep for n in node.input}
    read_as_float32 |= {o.name for o in graph.output}
    halves: dict[str, str] = {}  # float32 tensor -> its float16 twin
    out = []
    for node in graph.node:
        if node.name not in keep:
            out.append(node)
            continue
        for i, name in enumerate(node.input):
            init = initializers.get(name)
            if name in halves or not name or (init is None and name not in float32) or \
                    (init is not None and init.data_type != TensorProto.FLOAT):
                node.input[i] = halves.get(name, name)
                continue
            halves[name] = f"{name}_fp16"
            if init is not None:
                graph.initializer.append(numpy_helper.from_array(
                    numpy_helper.to_array(init).astype(np.float16), halves[name]))
            else:
                out.append(helper.make_node("Cast", [name], [halves[name]], to=TensorProto.FLOAT16,
                                            name=f"{name}_to_fp16"))
            node.input[i] = halves[name]
        out.append(node)
        for i, name in enumerate(node.output):
            if not name:
                continue
            node.output[i] = halves[name] = f"{name}_fp16"  # what a kept reader takes
            if name in read_as_float32:
                out.append(helper.make_node("Cast", [node.output[i]], [name], to=TensorProto.FLOAT,
                                            name=f"{name}_to_fp32"))
    used = {n for node in out for n in node.input}
    kept_inits = [t for t in graph.initializer if t.name in used]  # float32 weights only kept nodes read go
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.node[:]
    graph.node.extend(out)
    onnx.save(model, str(path))


def convert_fp16(src: Path, dst: Path) -> None:
    """float16 weights and ops, float32 graph inputs and outputs (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


class Calibration:
    """Calibration inputs, fed in equal batches of 32: the histogram calibrators (entropy,
    percentile) stack per-batch outputs and need equal shapes, so the last batch is completed
    with samples from the start (a few counted twice, none left out)."""

    def __init__(self, feeds: dict[str, np.ndarray], description: dict[str, Any]):
        self.feeds = feeds
        self.description = description

    def batches(self) -> list[dict[str, np.ndarray]]:
        n = len(next(iter(self.feeds.values())))
        size = min(CALIBRATION_BATCH, n)
        count = -(-n // size)
        return [{k: np.take(v, np.arange(i * size, (i + 1) * size) % n, axis=0) for k, v in self.feeds.items()}
                for i in range(count)]

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        batches = self.batches()

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._batches = iter(batches)

            def get_next(self):
                return next(self._batches, None)

        return Reader()
