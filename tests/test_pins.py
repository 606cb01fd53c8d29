"""Issue 13, finding 15: dependency floors exclude the releases with known holes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FLOORS = {"torch": "2.6", "pillow": "10.3", "h11": "0.16", "onnxruntime": "1.27", "onnxruntime-gpu": "1.27"}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return {r.name.lower(): r for r in reqs}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floor_excludes_vulnerable_releases(name):
    req = _requirements().get(name)
    assert req is not None, f"{name} has no requirement in pyproject.toml"
    floor = Version(FLOORS[name])
    lowest = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert lowest and min(lowest) >= floor, f"{req}: must be at least {floor}"


def test_installed_onnxruntime_refuses_sparse_external_data_itself(tmp_path):
    """The leak dlkit's own check blocks is refused by the runtime too (1.26 returned the bytes)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    (tmp_path / "secret.bin").write_bytes(b"SECRET!!" * 2)
    values = helper.make_tensor("sv", TensorProto.FLOAT, [4], [0.0] * 4)
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("i", TensorProto.INT64, [4], [0, 1, 2, 3]), [4])
    graph = helper.make_graph([helper.make_node("Identity", ["sv"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(Exception) as caught:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {})
    assert "SECRET" not in str(caught.value)
