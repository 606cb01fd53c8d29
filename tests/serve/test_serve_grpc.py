"""The KServe v2 gRPC transport with unmodified tritonclient.grpc against a real `dlkit serve` process."""

from __future__ import annotations

import time

import numpy as np
import pytest
from serve_helpers import MAX_BATCH, MODELS, TOKEN, ServerProcess, close, digits, free_port

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def grpc_server(exported_repo):
    port = free_port()
    srv = ServerProcess(exported_repo, "--grpc-port", str(port), "--max-batch-size", str(MAX_BATCH),
                        "--max-queue-size", "2")
    assert f"dlkit serve: gRPC (KServe v2) on 127.0.0.1:{port}" in srv.lines  # printed before the HTTP line
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    srv.stop()


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32"):
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_metadata_and_config(grpc_server):
    client = grpcclient.InferenceServerClient(grpc_server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn-digits") and client.is_model_ready("cnn-digits", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("cnn-digits", "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "dlkit" and "binary_tensor_data" in meta["extensions"]
    for name in MODELS:
        model = client.get_model_metadata(name, as_json=True)
        assert model["name"] == name and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
        assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    config = client.get_model_config("cnn-digits", as_json=True)["config"]
    assert config["max_batch_size"] == MAX_BATCH and config["input"][0]["dims"] == ["1", "8", "8"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_infer_raw_and_typed_contents_match_offline(grpc_server, offline):
    client = grpcclient.InferenceServerClient(grpc_server.grpc)
    for i, name in enumerate(MODELS):
        x = digits(3, seed=i)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("logits", "probabilities")]
        result = client.infer(name, [_input(x)], outputs=outputs, request_id=f"g-{i}")
        close(result.as_numpy("logits"), offline(name, x)["logits"])
        close(result.as_numpy("probabilities"), offline(name, x)["probabilities"])
        response = result.get_response()
        assert response.id == f"g-{i}" and response.model_name == name and response.model_version == "1"
        assert len(response.raw_output_contents) == 2
    # Typed contents (fp32_contents) instead of raw bytes: the request tritonclient cannot build.
    from tritonclient.grpc import service_pb2

    x = digits(2, seed=7)
    request = service_pb2.ModelInferRequest(model_name="mlp-digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    out = request.outputs.add(name="logits")
    out.parameters["binary_data"].bool_param = False
    response = client._client_stub.ModelInfer(request)
    assert not response.raw_output_contents
    close(np.array(response.outputs[0].contents.fp32_contents, np.float32).reshape(2, 10),
          offline("mlp-digits", x)["logits"])


@pytest.mark.parametrize("case,match", [
    ("datatype", "expected datatype FP32, received 'FP64'"),
    ("shape", "expected shape"),
    ("zero", "positive integers"),
    ("batch", "exceeds the maximum batch size"),
    ("output", "unknown output 'embedding'"),
])
def test_invalid_requests_are_invalid_argument(grpc_server, case, match):
    client = grpcclient.InferenceServerClient(grpc_server.grpc)
    x = digits(1)
    inputs = {"datatype": [_input(x.astype(np.float64), datatype="FP64")],
              "shape": [_input(np.zeros((1, 8, 8), np.float32))],
              "zero": [_input(np.zeros((0, 1, 8, 8), np.float32))],
              "batch": [_input(digits(MAX_BATCH + 1))]}.get(case, [_input(x)])
    outputs = [grpcclient.InferRequestedOutput("embedding")] if case == "output" else None
    with pytest.raises(InferenceServerException, match=match) as info:
        client.infer("cnn-digits", inputs, outputs=outputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live()


def test_a_full_queue_is_unavailable(grpc_server):
    """--max-queue-size 2 and many concurrent calls: some may be UNAVAILABLE, none anything else."""
    client = grpcclient.InferenceServerClient(grpc_server.grpc)
    x = digits(MAX_BATCH)
    codes = []
    done = []

    def callback(result, error):
        codes.append(None if error is None else error.status())
        done.append(1)

    for _ in range(60):
        client.async_infer("rnn-digits", [_input(x)], callback)
    for _ in range(6000):  # bounded: until every callback has run
        if len(done) == 60:
            break
        time.sleep(0.01)
    assert len(done) == 60 and set(codes) <= {None, "StatusCode.UNAVAILABLE"}, codes
    from dlkit.serve.dataplane import Overloaded
    from dlkit.serve.grpc_service import STATUS

    assert STATUS[Overloaded("full").status].name == "UNAVAILABLE"  # what a full queue answers
    assert client.is_server_ready()


def test_token_as_authorization_metadata(exported_repo, offline):
    port = free_port()
    srv = ServerProcess(exported_repo, "--models", "mlp-digits", "--grpc-port", str(port),
                        env={"DLKIT_TOKEN": TOKEN})
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()  # health needs no token, as over REST
        with pytest.raises(InferenceServerException, match="authorization") as info:
            client.get_model_metadata("mlp-digits")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("mlp-digits", headers={"authorization": "Bearer wrong"})
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        x = digits(1)
        result = client.infer("mlp-digits", [_input(x)], headers={"authorization": f"Bearer {TOKEN}"})
        close(result.as_numpy("logits"), offline("mlp-digits", x)["logits"])
    finally:
        assert srv.stop() == 0


def test_a_taken_grpc_port_is_one_line_exit_2(exported_repo):
    import socket
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "dlkit", "serve", "--repo", str(exported_repo), "--port", "0",
                               "--models", "mlp-digits", "--grpc-port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--grpc-port" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
