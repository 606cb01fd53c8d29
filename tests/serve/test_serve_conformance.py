"""Open Inference Protocol conformance: responses are always valid JSON (non-finite numbers as the
strings "NaN", "Infinity", "-Infinity"), /v2 and /v2/ answer without a redirect, one platform
name in metadata and configuration."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from serve_helpers import ServerProcess

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def log_model(tmp_path_factory):
    """A hand-made folder: y = log(x), which makes NaN and infinities from ordinary inputs."""
    import onnx
    from onnx import TensorProto, helper

    root = tmp_path_factory.mktemp("conformance") / "models"
    folder = root / "log" / "1"
    folder.mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    (folder / "meta.json").write_text(json.dumps({"name": "log", "version": 1, "task": None}))
    srv = ServerProcess(root)
    yield srv
    srv.stop()


def test_non_finite_outputs_are_valid_json(log_model):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-1, 0, 1, "Infinity"]}]}
    r = httpx.post(f"{log_model.url}/v2/models/log/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert _strict(r.text)["outputs"][0]["data"] == ["NaN", "-Infinity", 0.0, "Infinity"]

    client = httpclient.InferenceServerClient(f"127.0.0.1:{log_model.port}")
    x = np.array([[-1, 0, 1, np.inf]], np.float32)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    for binary in (False, True):
        result = client.infer("log", [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
        np.testing.assert_array_equal(result.as_numpy("y"), np.log(x))  # NaN, -inf, 0, inf come back


@pytest.mark.parametrize("value", ["nan", "inf", "1.5", None])
def test_only_the_three_non_finite_strings_are_accepted(log_model, value):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, "NaN", value]}]}
    r = httpx.post(f"{log_model.url}/v2/models/log/infer", json=body, timeout=30)
    assert r.status_code == 400 and _strict(r.text)["error"]


def test_v2_with_and_without_slash_and_no_redirects(log_model):
    for path in ("/v2", "/v2/"):
        r = httpx.get(log_model.url + path, timeout=30, follow_redirects=False)
        assert r.status_code == 200 and r.json()["name"] == "dlkit"
    r = httpx.get(f"{log_model.url}/v2/models/log/", timeout=30, follow_redirects=False)
    assert r.status_code == 404  # not a 307 to another spelling


def test_one_platform_name(log_model):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{log_model.port}")
    assert client.get_model_metadata("log")["platform"] == client.get_model_config("log")["platform"] \
        == "onnxruntime_onnx"
