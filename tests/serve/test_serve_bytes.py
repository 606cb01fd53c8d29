"""BYTES (string) tensors in and out, JSON and binary (4-byte little-endian length per element, as
Triton), REST and gRPC, on a string graph (Identity, built with onnx.helper) served from a
hand-made model folder."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
from serve_helpers import ServerProcess, free_port

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXT = np.array([["hello", "wörld"], ["", "a:b:c " * 50]], dtype=object)


def _string_model(folder):
    """model.onnx (text [batch, 2] string -> echo, Identity) and the meta.json a served version needs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["text"], ["echo"])], "echo",
                              [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
                              [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "meta.json").write_text(json.dumps({"name": "echo", "version": 1, "task": None}))


@pytest.fixture(scope="module")
def strings(tmp_path_factory):
    root = tmp_path_factory.mktemp("strings") / "models"
    _string_model(root / "echo" / "1")
    port = free_port()
    srv = ServerProcess(root, "--grpc-port", str(port))
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    srv.stop()


def _expected() -> np.ndarray:
    return np.vectorize(lambda s: s.encode(), otypes=[object])(TEXT)


def test_metadata_says_bytes(strings):
    meta = httpclient.InferenceServerClient(f"127.0.0.1:{strings.port}").get_model_metadata("echo")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 2]}]
    assert meta["outputs"] == [{"name": "echo", "datatype": "BYTES", "shape": [-1, 2]}]


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_round_trip_over_rest(strings, binary):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{strings.port}")
    tensor = httpclient.InferInput("text", list(TEXT.shape), "BYTES")
    tensor.set_data_from_numpy(TEXT, binary_data=binary)
    result = client.infer("echo", [tensor], outputs=[httpclient.InferRequestedOutput("echo", binary_data=binary)])
    got = result.as_numpy("echo")
    if not binary:  # JSON strings come back as str
        got = np.vectorize(lambda s: s.encode(), otypes=[object])(got)
    assert got.shape == TEXT.shape and got.tolist() == _expected().tolist()


def test_bytes_round_trip_over_grpc(strings):
    client = grpcclient.InferenceServerClient(strings.grpc)
    tensor = grpcclient.InferInput("text", list(TEXT.shape), "BYTES")
    tensor.set_data_from_numpy(TEXT)  # raw_input_contents, length-prefixed
    assert client.infer("echo", [tensor]).as_numpy("echo").tolist() == _expected().tolist()
    typed = grpcclient.InferRequestedOutput("echo")
    result = client.infer("echo", [tensor], outputs=[typed])
    assert result.as_numpy("echo").tolist() == _expected().tolist()


def test_binary_wire_format_and_nested_json(strings):
    elements = [s.encode() for s in TEXT.ravel()]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps({"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "echo", "parameters": {"binary_data": True}}]}).encode()
    r = httpx.post(f"{strings.url}/v2/models/echo/infer", content=header + blob, timeout=30,
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    out = meta["outputs"][0]
    assert out["datatype"] == "BYTES" and out["parameters"]["binary_data_size"] == len(blob)
    assert r.content[n:] == blob  # the same encoding back
    nested = {"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES", "data": TEXT.tolist()}]}
    r = httpx.post(f"{strings.url}/v2/models/echo/infer", json=nested, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == TEXT.ravel().tolist()


@pytest.mark.parametrize("blob, message", [
    (struct.pack("<I", 100) + b"abc", "declares 100 bytes"),
    (struct.pack("<I", 1) + b"a" + b"\x00\x00", "ends inside element 1's length"),
    (b"".join(struct.pack("<I", 1) + b"a" for _ in range(5)), "left over after 4"),
    (b"".join(struct.pack("<I", 1) + b"\xff" for _ in range(4)), "not UTF-8"),
])
def test_bad_binary_bytes_are_400(strings, blob, message):
    header = json.dumps({"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = httpx.post(f"{strings.url}/v2/models/echo/infer", content=header + blob, timeout=30,
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and message in r.json()["error"]


def test_bad_json_bytes_are_400(strings):
    for data in (["a", "b", "c"], [1, 2, 3, 4]):
        body = {"inputs": [{"name": "text", "shape": [2, 2], "datatype": "BYTES", "data": data}]}
        r = httpx.post(f"{strings.url}/v2/models/echo/infer", json=body, timeout=30)
        assert r.status_code == 400 and "list of 4 strings" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="expected datatype BYTES"):
        tensor = httpclient.InferInput("text", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 2), np.float32))
        httpclient.InferenceServerClient(f"127.0.0.1:{strings.port}").infer("echo", [tensor])
    assert httpx.get(f"{strings.url}/v2/health/ready", timeout=30).status_code == 200
