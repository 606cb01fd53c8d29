"""Issue 13, findings 3 and 7: external data is checked wherever a tensor can live, and tiny
files cannot make dlkit allocate gigabytes (graph tensors and .npz/.npy arrays are capped)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from dlkit.errors import InputError
from dlkit.infer.onnx_files import DEFAULT_MAX_GRAPH_BYTES, check_external_data
from dlkit.testing import run_cli


def _external(name: str, location: str, extra: tuple = ()) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16"), *extra):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(nodes=(), initializer=(), sparse=(), functions=(), opset=17):
    graph = helper.make_graph(list(nodes) or [helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=list(initializer), sparse_initializer=list(sparse))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("f", 1)],
                             functions=list(functions))


def _sparse(location: str):
    indices = helper.make_tensor("idx", TensorProto.INT64, [4], [0, 1, 2, 3])
    return helper.make_sparse_tensor(_external("sv", location), indices, [4])


def _cases():
    constant = helper.make_node("Constant", [], ["c"], sparse_value=_sparse("../secret.bin"))
    in_function = helper.make_node("Constant", [], ["k"], value=_external("fk", "../secret.bin"))
    function = helper.make_function("f", "leak", [], ["k"], [in_function], [helper.make_opsetid("", 17)])
    with_training = _model()
    info = with_training.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[_external("t", "/etc/passwd")]))
    return {
        "sparse initializer": (_model(sparse=[_sparse("../../../../etc/passwd")]), "sparse initializer"),
        "Constant sparse_value": (_model(nodes=[constant, helper.make_node("Identity", ["x"], ["y"])]),
                                  "sparse attribute tensor"),
        "function body": (_model(functions=[function]), "attribute tensor"),
        "training info": (with_training, "absolute path"),
        "second location key": (_model(initializer=[_external("w", "w.bin", (("location", "../secret.bin"),))]),
                                "repeats an external-data key"),
        "unknown key": (_model(initializer=[_external("w", "w.bin", (("path", "../secret.bin"),))]),
                        "unknown external-data key"),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_external_data_is_checked_everywhere(tmp_path, case):
    model, message = _cases()[case]
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match=message):
        check_external_data(path)


def _constant_of_shape(n: int) -> bytes:
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [n])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
             helper.make_node("Add", ["x", "big"], ["y"])]
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_graph_allocation_is_capped_at_load(tmp_path, monkeypatch):
    from dlkit.infer.session import Session

    path = tmp_path / "model.onnx"
    path.write_bytes(_constant_of_shape(2_000_000))  # 8 MB of float32 from a file of ~150 bytes
    assert path.stat().st_size < 400
    Session(path, "cpu")  # under the default cap (1 GiB) it loads
    monkeypatch.setenv("DLKIT_MAX_GRAPH_BYTES", "1000000")
    with pytest.raises(InputError, match=r"would take 8,000,000 bytes at load.*DLKIT_MAX_GRAPH_BYTES"):
        Session(path, "cpu")
    assert DEFAULT_MAX_GRAPH_BYTES == 1 << 30


@pytest.fixture
def zeros_npz(tmp_path, monkeypatch):
    """A small .npz of deflated zeros that inflates past a 1 MB cap."""
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((4096, 64), np.float32), y=np.zeros(4096, np.int64))
    assert path.stat().st_size < 100_000
    monkeypatch.setenv("DLKIT_MAX_ARRAY_BYTES", "1000000")
    return path


def test_npz_bomb_is_refused_by_train(zeros_npz, repo):
    out = run_cli("train", "mlp", "--data", str(zeros_npz), "--epochs", "1", expect=2)
    assert "DLKIT_MAX_ARRAY_BYTES" in out.stderr and "Traceback" not in out.stderr
    assert not repo.root.exists()


def test_npz_bomb_and_lying_npy_header_are_refused_by_predict(zeros_npz, tmp_path):
    from dlkit.infer.predict import load_npy, load_npz

    with pytest.raises(InputError, match="DLKIT_MAX_ARRAY_BYTES"):
        load_npz(zeros_npz)
    liar = tmp_path / "liar.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(3, np.float32))
    header["shape"] = (10**5,)  # 400 kB declared (under the cap), 12 bytes present
    with open(liar, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 12)
    with pytest.raises(InputError, match="file holds less"):
        load_npy(liar)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickled"):
        load_npy(obj)
