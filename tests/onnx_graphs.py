"""Small ONNX graphs built with onnx.helper (and torch) for the import tests, each with the
inputs it takes, so a test can run it through onnxruntime directly and through dlkit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RNG = np.random.default_rng(0)


def _save(model, path: Path, ir_version: int = 8) -> Path:
    import onnx

    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def classifier(path: Path, features: int = 4, classes: int = 3, opset: int = 13, probabilities: bool = False) -> Path:
    """x (N, features) float -> logits (N, classes) [-> probabilities]: a single-input classifier
    with a hidden layer (two MatMuls the quantizer can quantize)."""
    from onnx import TensorProto as T, helper, numpy_helper

    w1 = numpy_helper.from_array(RNG.standard_normal((features, 16)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(RNG.standard_normal((16, classes)).astype(np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", T.FLOAT, ["N", classes])]
    if probabilities:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        outputs.append(helper.make_tensor_value_info("probabilities", T.FLOAT, ["N", classes]))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", T.FLOAT, ["N", features])],
                              outputs, [w1, w2])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path,
                 ir_version=8 if opset >= 13 else 6)


def multi_io(path: Path) -> tuple[Path, dict]:
    """Three inputs (float x (N, 4), int64 ids (N, 3), bool mask (N, 3)), three outputs
    (float score (N, 2), int64 picked (N, 3), int64 count (N,))."""
    from onnx import TensorProto as T, helper, numpy_helper

    w = numpy_helper.from_array(RNG.standard_normal((4, 2)).astype(np.float32), "W")
    zero = numpy_helper.from_array(np.zeros((1,), np.int64), "zero")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["score"]),
             helper.make_node("Where", ["mask", "ids", "zero"], ["picked"]),
             helper.make_node("Cast", ["mask"], ["mask64"], to=T.INT64),
             helper.make_node("ReduceSum", ["mask64", "axes"], ["count"], keepdims=0)]
    graph = helper.make_graph(nodes, "multi", [
        helper.make_tensor_value_info("x", T.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("ids", T.INT64, ["N", 3]),
        helper.make_tensor_value_info("mask", T.BOOL, ["N", 3]),
    ], [helper.make_tensor_value_info("score", T.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("picked", T.INT64, ["N", 3]),
        helper.make_tensor_value_info("count", T.INT64, ["N"])], [w, zero, axes])
    feeds = {"x": RNG.standard_normal((5, 4)).astype(np.float32),
             "ids": RNG.integers(0, 100, (5, 3)).astype(np.int64),
             "mask": RNG.integers(0, 2, (5, 3)).astype(bool)}
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path), feeds


def unary(path: Path, shape: list, op: str = "Relu", dtype: str = "float32") -> tuple[Path, dict]:
    """y = op(x) for an input of ``shape`` (ints fixed, strings dynamic): fixed batch, no batch
    axis, a batch axis that is not the first; float16 inputs with ``dtype``."""
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "unary",
                              [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, shape)])
    concrete = [d if isinstance(d, int) else 3 for d in shape]
    feeds = {"x": RNG.standard_normal(concrete).astype(dtype)}
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path), feeds


def torch_gru(path: Path) -> tuple[Path, dict]:
    """A torch GRU classifier exported with the tracer: (N, T, 3) -> (N, 2), dynamic N and T."""
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(3, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    net = Net().eval()
    example = torch.randn(2, 5, 3)
    torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}, "logits": {0: "batch"}}, opset_version=17)
    return path, {"x": np.random.default_rng(3).standard_normal((4, 7, 3)).astype(np.float32)}


BACKEND = ["simple/test_single_relu_model", "simple/test_sign_model", "pytorch-converted/test_Conv2d",
           "pytorch-converted/test_Embedding", "pytorch-operator/test_operator_chunk"]


def backend_case(name: str) -> tuple[Path, dict, list]:
    """A model shipped in the onnx package's backend test data, its inputs and expected outputs."""
    import onnx
    from onnx import numpy_helper

    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / name
    model = onnx.load(str(folder / "model.onnx"))
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    data = folder / "test_data_set_0"
    read = lambda p: numpy_helper.to_array(onnx.load_tensor(str(p)))  # noqa: E731
    inputs = {n: read(data / f"input_{i}.pb") for i, n in enumerate(names)}
    outputs = [read(p) for p in sorted(data.glob("output_*.pb"))]
    return folder / "model.onnx", inputs, outputs
