"""Triton's model repository extension (index, load, unload) and --model-control-mode, with
unmodified tritonclient.http and .grpc against real `dlkit serve` processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from serve_helpers import ServerProcess, close, digits, free_port, infer_body

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402

WAIT_SECONDS = 120


def _repo_copy(source, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(source, root)
    return root


def _until(predicate, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {WAIT_SECONDS} s: {what}")


def _tensor(module, x):
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


@pytest.fixture
def explicit(mlp_exported_repo, tmp_path):
    """Only mlp-digits exported; the other models trained but not exported; explicit mode."""
    root = _repo_copy(mlp_exported_repo, tmp_path)
    port = free_port()
    srv = ServerProcess(root, "--model-control-mode", "explicit", "--grpc-port", str(port))
    srv.root, srv.grpc = root, f"127.0.0.1:{port}"
    yield srv
    srv.stop()


def test_index_load_a_newly_exported_model_and_unload(explicit, offline):
    from dlkit.export.onnx import export_onnx
    from dlkit.store.repository import ModelRepository

    http = httpclient.InferenceServerClient(f"127.0.0.1:{explicit.port}")
    grpc = grpcclient.InferenceServerClient(explicit.grpc)
    assert "model_repository" in http.get_server_metadata()["extensions"]
    index = http.get_model_repository_index()
    assert {"name": "mlp-digits", "version": "1", "state": "READY", "reason": ""} in index
    assert {"name": "cnn-digits"} in index  # in the repository, never loaded
    assert http.get_model_repository_index(query_params=None) == index
    ready = httpx.post(f"{explicit.url}/v2/repository/index", json={"ready": True}, timeout=30).json()
    assert [e["name"] for e in ready] == ["mlp-digits"]

    with pytest.raises(InferenceServerException, match="dlkit export onnx cnn-digits"):
        http.load_model("cnn-digits")  # trained, not exported
    with pytest.raises(InferenceServerException, match="no version"):
        http.load_model("nope")
    with pytest.raises(InferenceServerException, match="invalid model name"):
        grpc.load_model("../etc")

    export_onnx(ModelRepository(explicit.root).resolve("cnn-digits"), exporter="torchscript")
    grpc.load_model("cnn-digits")  # no restart
    assert http.is_model_ready("cnn-digits") and grpc.is_model_ready("cnn-digits")
    x = digits(2)
    close(http.infer("cnn-digits", [_tensor(httpclient, x)]).as_numpy("logits"), offline("cnn-digits", x)["logits"])
    assert {"name": "cnn-digits", "version": "1", "state": "READY"} in \
        grpc.get_model_repository_index(as_json=True)["models"]  # protobuf's JSON leaves out empty fields

    http.unload_model("cnn-digits")
    assert not http.is_model_ready("cnn-digits")
    r = httpx.post(f"{explicit.url}/v2/models/cnn-digits/infer", json=infer_body(x), timeout=30)
    assert r.status_code == 404 and "not loaded" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="not loaded") as info:
        grpc.infer("cnn-digits", [_tensor(grpcclient, x)])
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert {"name": "cnn-digits", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in \
        http.get_model_repository_index()
    http.unload_model("cnn-digits")  # unloading what is not loaded succeeds, as in Triton
    http.load_model("cnn-digits")
    close(grpc.infer("cnn-digits", [_tensor(grpcclient, x)]).as_numpy("logits"), offline("cnn-digits", x)["logits"])
    assert httpx.get(f"{explicit.url}/v2/health/ready", timeout=30).status_code == 200

    # A client cannot hand the server a configuration or model files.
    r = httpx.post(f"{explicit.url}/v2/repository/models/cnn-digits/load",
                   json={"parameters": {"file:1/model.onnx": "AAAA"}}, timeout=30)
    assert r.status_code == 400 and "only from its own repository" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="only from its own repository"):
        grpc.load_model("cnn-digits", config=json.dumps({"backend": "python"}))


def test_unload_while_serving_lets_in_flight_requests_finish(explicit, offline):
    """A request whose body is still arriving when the unload comes is answered; later ones 404."""
    x = digits(1)
    body = json.dumps(infer_body(x)).encode()
    sock = socket.create_connection(("127.0.0.1", explicit.port), timeout=60)
    sock.sendall(f"POST /v2/models/mlp-digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    _until(lambda: "dlkit_inference_requests_total{model=\"mlp-digits\",version=\"1\"} 1"
           in httpx.get(f"{explicit.url}/metrics", timeout=30).text, "the request reached the model")
    done = threading.Event()
    errors = []

    def unload():
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{explicit.port}", network_timeout=120)
            client.unload_model("mlp-digits")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        done.set()

    threading.Thread(target=unload, daemon=True).start()
    _until(lambda: httpx.get(f"{explicit.url}/v2/models/mlp-digits/ready", timeout=30).status_code == 404,
           "the model stops taking new requests")
    assert not done.is_set()  # the unload waits for the request in flight
    sock.sendall(body[10:])
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200")
    outputs = {o["name"]: o for o in json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"]}
    close(np.array(outputs["logits"]["data"], np.float32).reshape(1, -1), offline("mlp-digits", x)["logits"])
    assert done.wait(WAIT_SECONDS) and not errors
    r = httpx.post(f"{explicit.url}/v2/models/mlp-digits/infer", json=infer_body(x), timeout=30)
    assert r.status_code == 404


def test_none_mode_refuses_load_and_unload(server):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    for call in (http.load_model, http.unload_model):
        with pytest.raises(InferenceServerException, match="--model-control-mode none"):
            call("mlp-digits")
    assert http.is_model_ready("mlp-digits")
    assert {e["name"] for e in http.get_model_repository_index()} >= {"mlp-digits", "cnn-digits"}


def test_poll_mode_follows_the_repository(mlp_exported_repo, tmp_path, offline):
    root = _repo_copy(mlp_exported_repo, tmp_path)
    srv = ServerProcess(root, "--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    try:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")
        staged = tmp_path / "mlp-copy"
        shutil.copytree(root / "mlp-digits", staged)
        os.rename(staged, root / "mlp-copy")  # appears whole
        _until(lambda: httpx.get(f"{srv.url}/v2/models/mlp-copy/ready", timeout=30).status_code == 200,
               "the poller loads a new model")
        x = digits(2)
        close(http.infer("mlp-copy", [_tensor(httpclient, x)]).as_numpy("logits"), offline("mlp-digits", x)["logits"])
        with pytest.raises(InferenceServerException, match="--model-control-mode poll"):
            http.unload_model("mlp-copy")
        shutil.rmtree(root / "mlp-copy")
        _until(lambda: httpx.get(f"{srv.url}/v2/models/mlp-copy/ready", timeout=30).status_code == 404,
               "the poller unloads a removed model")
        assert http.is_model_ready("mlp-digits") and http.is_server_ready()
    finally:
        assert srv.stop() == 0
