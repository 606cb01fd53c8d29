"""Issue 13, finding 8 (the loaders): metadata nested 1e5 deep or holding a 5000-digit integer
is one of dlkit's errors, never RecursionError or ValueError."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from dlkit.errors import InputError
from dlkit.testing import run_cli

DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = "7" * 5000


def _onnx_with_metadata(path, value: str):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"dlkit": value, "note": "plain text stays text"})
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("value", [DEEP, LONG_INT, '{"n": ' + LONG_INT + "}"])
def test_hostile_onnx_metadata_is_an_input_error(tmp_path, value):
    from dlkit.infer.session import Session

    path = _onnx_with_metadata(tmp_path / "model.onnx", value)
    with pytest.raises(InputError, match="metadata 'dlkit'"):
        Session(path, "cpu")


def test_plain_text_metadata_still_loads(tmp_path):
    from dlkit.infer.session import Session

    session = Session(_onnx_with_metadata(tmp_path / "model.onnx", '{"ok": 1}'), "cpu")
    assert session.metadata == {"dlkit": {"ok": 1}, "note": "plain text stays text"}


@pytest.mark.parametrize("text", ["v = " + "[" * 100_000 + "]" * 100_000, "[" * 100_000 + "a]"])
def test_deep_recipe_is_one_line(tmp_path, repo, text):
    recipe = tmp_path / "r.toml"
    recipe.write_text('arch = "mlp"\n' + text + "\n")
    out = run_cli("train", str(recipe), expect=2)
    assert "r.toml" in out.stderr and "Traceback" not in out.stderr
    assert not repo.root.exists()


def test_deep_set_value_is_one_line(repo):
    out = run_cli("train", "mlp", "--set", "model.hidden=" + "[" * 100_000 + "]" * 100_000, expect=2)
    assert "nested too deeply" in out.stderr and "Traceback" not in out.stderr
    assert not repo.root.exists()
