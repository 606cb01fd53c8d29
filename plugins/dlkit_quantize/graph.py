"""What a quantizer needs to know about an ONNX graph, and the rewrites done before quantizing.

- :func:`inspect_graph`: the op types a graph holds and its precision (float32, float16 or
  already int8), so that dlkit picks candidates that make sense and refuses what cannot be
  quantized again.
- :func:`preprocess`: a graph below opset 13 upgraded (:func:`upgrade_opset`), batch norms
  folded into the layer before them (:func:`fold_batchnorm`),
  then onnxruntime's ``quant_pre_process`` (shape inference and graph optimisation), falling
  back to lighter settings for graphs its symbolic shape inference cannot follow.
- :func:`gemm_to_matmul`: onnxruntime's dynamic quantizer has no Gemm kernel (only MatMul ->
  MatMulInteger), and every ``nn.Linear`` exports as Gemm; a Gemm with a constant weight is
  the same computation as MatMul + Add, which it can quantize.

Both rewrites compute the same function as before; the quantizing itself is onnxruntime's.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dlkit import DlkitError, default_opset

# Ops that only appear in a graph that is quantized already.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "QGemm", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulNBits",
    "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QAttention",
})


@dataclass(frozen=True)
class GraphInfo:
    """Op types and precision of a graph."""

    ops: Counter
    precision: str  # float32 | float16 | int8
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opset: int

    def has(self, *ops: str) -> bool:
        return any(op in self.ops for op in ops)


def inspect_graph(path: str | Path) -> GraphInfo:
    """Read a model's op types (subgraphs included) and whether it is float32, float16 or int8."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 -- protobuf's DecodeError and friends
        raise DlkitError(f"{path}: not a readable ONNX file ({str(exc)[:200]})") from None
    ops: Counter = Counter()
    float16 = False
    for graph in _graphs(model.graph):
        ops.update(n.op_type for n in graph.node)
        float16 = float16 or any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    if ops.keys() & QUANTIZED_OPS:
        precision = "int8"
    elif float16 or any(_elem_type(v) == onnx.TensorProto.FLOAT16 for v in model.graph.input):
        precision = "float16"
    else:
        precision = "float32"
    opset = default_opset(model) or 0
    initializers = {t.name for t in model.graph.initializer}
    return GraphInfo(ops, precision, tuple(i.name for i in model.graph.input if i.name not in initializers),
                     tuple(o.name for o in model.graph.output), opset)


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _elem_type(value_info) -> int:
    return value_info.type.tensor_type.elem_type if value_info.type.HasField("tensor_type") else 0


def preprocess(src: Path, dst: Path) -> dict:
    """Upgrade an old opset, fold batch norms, then ``quant_pre_process`` from ``src`` to ``dst``;
    returns what was done.

    Symbolic shape inference fails on some exported graphs (ops it does not know); the model
    is then prepared without it, and as a last resort without onnxruntime's optimisation.
    """
    from onnxruntime.quantization import quant_pre_process

    upgraded_path = dst.with_name(f"{dst.stem}-opset.onnx")
    upgraded = upgrade_opset(src, upgraded_path)
    folded_path = dst.with_name(f"{dst.stem}-folded.onnx")
    folded = fold_batchnorm(upgraded_path if upgraded else src, folded_path)
    attempts = [{}, {"skip_symbolic_shape": True}, {"skip_symbolic_shape": True, "skip_optimization": True}]
    errors = []
    for settings in attempts:
        try:
            with quiet():
                quant_pre_process(str(folded_path), str(dst), **settings)
            name_nodes(dst)
            return {**({"opset_upgraded": upgraded} if upgraded else {}), "batchnorm_folded": folded,
                    "quant_pre_process": True, **settings}
        except Exception as exc:  # noqa: BLE001 -- each stage raises its own types
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            errors.append(f"{settings or 'defaults'}: {type(exc).__name__}: {first}")
    raise DlkitError(f"quant_pre_process failed on {src.name}: {'; '.join(errors)}")


def name_nodes(path: Path) -> None:
    """Give every unnamed node a unique name: per-layer fallback and the sensitivity report name
    the nodes they keep float."""
    import onnx

    model = onnx.load(str(path))
    taken = {n.name for n in model.graph.node if n.name}
    unnamed = [n for n in model.graph.node if not n.name]
    for i, node in enumerate(unnamed):
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    if unnamed:
        onnx.save(model, str(path))


QDQ_OPSET = 13  # DequantizeLinear's axis (one scale per channel) and onnxruntime's QDQ fusions


def upgrade_opset(src: Path, dst: Path) -> list[int] | None:
    """Write ``src`` converted to opset 13 when it is older (``onnx.version_converter``);
    returns ``[old, 13]``, or None when nothing was converted (the graph is new enough, or the
    converter cannot convert it: the quantizers then work on the graph as it is).

    Below opset 13, DequantizeLinear has no ``axis``: every per-channel static model of an
    opset-11 graph is invalid ("Unrecognized attribute: axis").
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    old = default_opset(model)
    if old is None or old >= QDQ_OPSET:
        return None
    try:
        with quiet():
            converted = version_converter.convert_version(model, QDQ_OPSET)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 -- the converter raises C++ errors of many kinds; the old graph still works
        return None
    onnx.save(converted, str(dst))
    return [old, QDQ_OPSET]


def fold_batchnorm(src: Path, dst: Path) -> int:
    """Write ``src`` with every inference-mode BatchNormalization that follows a Gemm, Conv or
    ConvTranspose folded into that node's weights (onnxscript's rewrite rules); returns how many.

    onnxruntime folds Conv + BatchNormalization itself but not Gemm + BatchNormalization (an MLP
    with batch norm): unfolded, the norm's four float vectors per layer stay in the quantized
    file and its arithmetic stays in float between the integer MatMuls.
    """
    import onnx
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    model = onnx.load(str(src))
    before = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    if before:
        rules = [fuse_batchnorm_into_gemm_rule, fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule]
        try:
            with quiet():
                model = rewrite(model, pattern_rewrite_rules=rules)
        except Exception:  # noqa: BLE001 -- the rewrite is an optimisation: without it the graph is still right
            model = onnx.load(str(src))
    onnx.save(model, str(dst))
    return before - sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def gemm_to_matmul(model) -> int:
    """Rewrite each Gemm with a constant weight (``transA=0``, ``alpha=beta=1``) as MatMul + Add,
    in place; returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = Counter(i for n in graph.node for i in n.input)
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w_name = weight.name
        if attrs.get("transB", 0):  # MatMul takes the weight as (in, out)
            transposed = np.ascontiguousarray(numpy_helper.to_array(weight).T)
            if consumers[weight.name] > 1:
                w_name = f"{weight.name}_transposed"
                graph.initializer.append(numpy_helper.from_array(transposed, w_name))
            else:
                weight.CopyFrom(numpy_helper.from_array(transposed, w_name))
        name = node.name or node.output[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is None:
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], list(node.output), name=f"{name}_MatMul"))
        else:
            mid = f"{node.output[0]}_matmul"
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mid], name=f"{name}_MatMul"))
            nodes.append(helper.make_node("Add", [mid, bias], list(node.output), name=f"{name}_Add"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def set_metadata(model, props: dict[str, str]) -> None:
    """Replace a model's ``metadata_props`` (quantizers and optimisers may drop or keep them)."""
    from onnx import helper

    del model.metadata_props[:]
    helper.set_model_props(model, props)


@contextlib.contextmanager
def quiet():
    """onnxruntime's quantization tools log warnings through the root logger and print to
    stdout; keep stdout clean for ``--json`` and stderr for what users can act on."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
