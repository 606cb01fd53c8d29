"""dlkit serve: the Open Inference Protocol over real HTTP on loopback, with unmodified tritonclient.

The servers run as `dlkit serve` subprocesses (their own GIL, the real CLI and uvicorn); the
offline reference is onnxruntime in this process. Protocol parsing and the batcher are also
tested directly, where a test must control timing (a full queue, a batch with a bad request).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402

from dlkit.store.repository import ModelRepository  # noqa: E402
from dlkit.serve.batcher import DynamicBatcher, QueueFull  # noqa: E402
from dlkit.serve.protocol import ProtocolError, TensorSpec, encode_infer_response, parse_infer_request  # noqa: E402

MODELS = ["mlp-digits", "cnn-digits", "rnn-digits", "gru-digits"]
MAX_BATCH = 16
MAX_BYTES = 200_000
TOKEN = "s3cret-token"
STARTUP_SECONDS = 120
# Runs the real CLI and reports, when the process ends, whether torch was ever imported.
RUNNER = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('dlkit-test: torch imported: %s' % ('torch' in sys.modules), "
    "file=sys.stderr, flush=True))\n"
    "from dlkit.cli import main\n"
    "main(sys.argv[1:])\n"
)


# -- fixtures -------------------------------------------------------------------------------------
class ServerProcess:
    """A `dlkit serve` subprocess on a free loopback port, its stderr collected line by line."""

    def __init__(self, repo: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "serve", "--repo", str(repo), "--port", "0", "--threads", "1", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for(r"on http://127\.0\.0\.1:(\d+)")
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = STARTUP_SECONDS) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; stderr:\n"
                                     + "\n".join(self.lines[-30:])) from None
            if line is None:
                raise AssertionError(f"the server ended (rc {self.proc.poll()}) before {pattern!r}; stderr:\n"
                                     + "\n".join(self.lines[-30:]))
            if re.search(pattern, line):
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def server(exported_repo):
    """Every model, a small batch limit and body limit, no token."""
    srv = ServerProcess(exported_repo, "--max-batch-size", str(MAX_BATCH), "--max-request-bytes", str(MAX_BYTES))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def secured(exported_repo):
    """One model behind a bearer token given through DLKIT_TOKEN, without dynamic batching."""
    srv = ServerProcess(exported_repo, "--models", "cnn-digits", "--no-batching", env={"DLKIT_TOKEN": TOKEN})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def offline(exported_repo):
    """name -> inputs -> {output: array}, computed by onnxruntime in this process."""
    from dlkit.infer.session import Session

    sessions = {name: Session(ModelRepository(exported_repo).resolve(name).onnx_path, "cpu") for name in MODELS}
    return lambda name, x: sessions[name].run({"input": x})


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def infer_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    # Batched and single runs may round differently in the last bits.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


# -- tritonclient, unmodified ---------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_matches_offline(server, offline, binary):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    for i, name in enumerate(MODELS):
        x = digits(3, seed=i)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
        result = client.infer(name, [tensor], outputs=outputs, request_id=f"req-{i}")
        expected = offline(name, x)
        close(result.as_numpy("logits"), expected["logits"])
        close(result.as_numpy("probabilities"), expected["probabilities"])
        response = result.get_response()
        assert response["id"] == f"req-{i}" and response["model_name"] == name and response["model_version"] == "1"
        assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary
    # No outputs named: tritonclient asks for every output as binary; a version given by number.
    x = digits(1, seed=9)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("cnn-digits", [tensor], model_version="1")
    close(result.as_numpy("probabilities"), offline("cnn-digits", x)["probabilities"])


def test_tritonclient_compressed_request_and_selected_output(server, offline):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = digits(2, seed=5)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("mlp-digits", [tensor], outputs=[httpclient.InferRequestedOutput("probabilities")],
                              request_compression_algorithm=algorithm)
        assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
        close(result.as_numpy("probabilities"), offline("mlp-digits", x)["probabilities"])


def test_tritonclient_metadata_and_readiness(server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn-digits") and client.is_model_ready("cnn-digits", "1")
    assert not client.is_model_ready("no-such-model") and not client.is_model_ready("cnn-digits", "7")
    meta = client.get_server_metadata()
    assert meta["name"] == "dlkit" and "binary_tensor_data" in meta["extensions"]
    for name in MODELS:
        model = client.get_model_metadata(name)
        assert model["name"] == name and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
        assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
            ("logits", "FP32", [-1, 10]), ("probabilities", "FP32", [-1, 10])]
    assert client.get_model_metadata("cnn-digits", "1")["versions"] == ["1"]
    config = client.get_model_config("cnn-digits")
    assert config["max_batch_size"] == MAX_BATCH and config["input"][0]["dims"] == [1, 8, 8]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


# -- JSON details over plain HTTP -------------------------------------------------------------------
def test_nested_data_and_per_output_binary(server, offline):
    x = digits(2, seed=3)
    expected = offline("cnn-digits", x)
    body = {"id": "nested", "inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                        "data": x.tolist()}],
            "outputs": [{"name": "logits"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    size = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:size])
    assert header["id"] == "nested"
    logits, probs = header["outputs"]
    close(np.array(logits["data"], np.float32).reshape(logits["shape"]), expected["logits"])
    assert probs["parameters"]["binary_data_size"] == len(r.content) - size == 2 * 10 * 4
    close(np.frombuffer(r.content[size:], "<f4").reshape(2, 10), expected["probabilities"])


def test_metrics_endpoint(server):
    httpx.post(f"{server.url}/v2/models/mlp-digits/infer", json=infer_body(digits(1)))
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'dlkit_inference_requests_total\{model="mlp-digits",version="1"\} [1-9]', text)
    for family in ("dlkit_inference_request_duration_seconds_bucket", "dlkit_inference_queue_duration_seconds_count",
                   "dlkit_inference_batch_size_bucket", "dlkit_inference_failures_total", "dlkit_http_responses_total"):
        assert family in text


# -- every error case: status and a message naming what is wrong ----------------------------------
def _raw(body: dict | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


X1 = digits(1)
ERRORS = {
    "malformed JSON": (b'{"inputs": [', 400, "malformed JSON"),
    "not an object": (b"[1, 2]", 400, "must be a JSON object"),
    "shape of 10^12 elements, tiny data": (
        {"inputs": [{"name": "input", "shape": [15_625_000_000, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]},
        400, "batch size 15625000000 exceeds the maximum batch size 16"),
    "huge inner dims": (
        {"inputs": [{"name": "input", "shape": [1, 1, 1_000_000, 1_000_000], "datatype": "FP32", "data": [0.0]}]},
        400, "expected shape [-1, 1, 8, 8]"),
    "wrong datatype": (
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP64", "data": [0.0] * 64}]},
        400, "input 'input': expected datatype FP32, received 'FP64'"),
    "strings as data": (
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ["a"] * 64}]},
        400, "FP32 data expected, received non-numbers"),
    "missing input": ({"inputs": []}, 400, "missing input(s) 'input'; the model takes 'input' (FP32 [-1, 1, 8, 8])"),
    "extra input": (
        {"inputs": [infer_body(X1)["inputs"][0],
                    {"name": "mask", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        400, "unexpected input 'mask'"),
    "batch over max": (infer_body(digits(MAX_BATCH + 1)), 400, "batch size 17 exceeds the maximum batch size 16"),
    "data shorter than shape": (
        {"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]},
        400, "shape [2, 1, 8, 8] declares 128 elements, data holds 64"),
    "ragged nested data": (
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [[0.0] * 63, [1.0]]}]},
        400, "not a rectangular list"),
    "unknown output": (infer_body(X1, outputs=[{"name": "embedding"}]), 400,
                       "unknown output 'embedding'; the model has outputs 'logits', 'probabilities'"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_cases(server, case):
    body, status, message = ERRORS[case]
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=_raw(body),
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_binary_errors(server):
    x = digits(1)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 100}}]}).encode()
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=header + x.tobytes(),
                   headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 400 and "needs 256 bytes, binary_data_size is 100" in r.json()["error"]
    # A 10^12-element shape with 256 bytes of binary data.
    header = json.dumps({"inputs": [{"name": "input", "shape": [15_625_000_000, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    r = httpx.post(f"{server.url}/v2/models/mlp-digits/infer", content=header + x.tobytes(),
                   headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 400 and "exceeds the maximum batch size" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=b"{}",
                   headers={"inference-header-content-length": "99"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_not_found_and_method(server):
    cases = [("POST", "/v2/models/nope/infer", 404, "unknown model 'nope' (serving: cnn-digits"),
             ("POST", "/v2/models/cnn-digits/versions/9/infer", 404, "no served version '9' (versions: 1)"),
             ("GET", "/v2/models/cnn-digits/versions/x", 404, "no served version 'x'"),
             ("GET", "/v2/no/such/path", 404, "no such endpoint"),
             ("GET", "/v2/models/cnn-digits/infer", 405, "not allowed")]
    for method, path, status, message in cases:
        r = httpx.request(method, server.url + path, content=_raw(infer_body(X1)) if method == "POST" else None)
        assert r.status_code == status and message in r.json()["error"], (path, r.text)


def test_request_body_limit(server, offline):
    base = _raw(infer_body(digits(2, seed=1)))
    under = base[:-1] + b" " * (MAX_BYTES - len(base)) + b"}"  # JSON padded to exactly the limit
    assert len(under) == MAX_BYTES
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=under)
    assert r.status_code == 200, r.text
    close(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10),
          offline("cnn-digits", digits(2, seed=1))["logits"])
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=under + b" ")
    assert r.status_code == 413 and f"limit of {MAX_BYTES} bytes" in r.json()["error"]
    # A small gzip body that inflates past the limit.
    bomb = gzip.compress(under + b" " * 10_000)
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]


# -- concurrency --------------------------------------------------------------------------------------
def test_concurrent_clients_each_get_their_own_result(server, offline):
    clients, per_client = 16, 50

    def client(seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed)
        got = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(per_client):
                name = ("cnn-digits", "mlp-digits")[i % 2]
                x = rng.random((int(rng.integers(1, 4)), 1, 8, 8), dtype=np.float32)
                if i % 3:
                    r = http.post(f"/v2/models/{name}/infer", json=infer_body(x, id=f"{seed}-{i}"))
                    assert r.status_code == 200, r.text
                    out = r.json()
                    logits = np.array(out["outputs"][0]["data"], np.float32).reshape(out["outputs"][0]["shape"])
                else:  # binary in and out
                    header = json.dumps({"id": f"{seed}-{i}", "parameters": {"binary_data_output": True}, "inputs": [
                        {"name": "input", "shape": list(x.shape), "datatype": "FP32",
                         "parameters": {"binary_data_size": x.nbytes}}]}).encode()
                    r = http.post(f"/v2/models/{name}/infer", content=header + x.tobytes(),
                                  headers={"inference-header-content-length": str(len(header))})
                    assert r.status_code == 200, r.text
                    size = int(r.headers["inference-header-content-length"])
                    out = json.loads(r.content[:size])
                    logits = np.frombuffer(r.content[size:size + x.shape[0] * 40], "<f4").reshape(-1, 10)
                assert out["id"] == f"{seed}-{i}"
                got.append((name, x, logits))
        return got

    with ThreadPoolExecutor(clients) as pool:
        results = [r for chunk in pool.map(client, range(clients)) for r in chunk]
    assert len(results) == clients * per_client
    for name, x, logits in results:
        close(logits, offline(name, x)["logits"])


def test_bounded_load_zero_errors_and_still_healthy(server):
    """64 clients for a bounded time: every request answered 200, then the server is still healthy
    and its memory bounded."""
    clients, seconds = 64, 8.0
    deadline = time.monotonic() + seconds
    body = infer_body(digits(1))

    def client(_):
        codes = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while time.monotonic() < deadline and len(codes) < 500:
                codes.append(http.post("/v2/models/cnn-digits/infer", json=body).status_code)
        return codes

    with ThreadPoolExecutor(clients) as pool:
        codes = [c for chunk in pool.map(client, range(clients)) for c in chunk]
    assert codes and set(codes) == {200}, f"{len(codes)} requests, codes {sorted(set(codes))}"
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{server.proc.pid}/status").read_text()).group(1))
    assert rss_kib < 400 * 1024, f"server resident memory {rss_kib // 1024} MiB after the load"


# -- auth, shutdown, torch ----------------------------------------------------------------------------
def test_token_required_except_health(secured, offline):
    auth = {"authorization": f"Bearer {TOKEN}"}
    for path in ("/v2", "/v2/models/cnn-digits", "/metrics", "/v2/models/cnn-digits/ready"):
        r = httpx.get(secured.url + path)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"], path
        assert httpx.get(secured.url + path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(secured.url + path, headers=auth).status_code == 200
    assert httpx.post(f"{secured.url}/v2/models/cnn-digits/infer", json=infer_body(X1)).status_code == 401
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(secured.url + path).status_code == 200
    client = httpclient.InferenceServerClient(f"127.0.0.1:{secured.port}")
    tensor = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(X1)
    close(client.infer("cnn-digits", [tensor], headers=auth).as_numpy("logits"), offline("cnn-digits", X1)["logits"])
    with pytest.raises(InferenceServerException, match="Authorization"):
        client.infer("cnn-digits", [tensor])


def test_graceful_shutdown_finishes_in_flight_and_never_imports_torch(secured, offline):
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = _raw(infer_body(X1))
    with socket.create_connection(("127.0.0.1", secured.port), timeout=30) as sock:
        # Headers and half the body: the request is in flight until the rest arrives.
        sock.sendall(f"POST /v2/models/cnn-digits/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:100])
        for _ in range(600):  # bounded: until the server counts it (the metrics request is the other one)
            text = httpx.get(f"{secured.url}/metrics", headers=auth).text
            if re.search(r"^dlkit_http_requests_in_flight [2-9]", text, re.M):
                break
        else:
            pytest.fail("the half-sent request never showed as in flight")
        secured.proc.send_signal(signal.SIGTERM)
        secured.wait_for("stopping: finishing in-flight requests", timeout=30)
        sock.sendall(body[100:])
        response = b""
        while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < _content_length(response):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:300]
    close(np.array(json.loads(payload)["outputs"][0]["data"], np.float32).reshape(1, 10),
          offline("cnn-digits", X1)["logits"])
    assert secured.proc.wait(timeout=60) == 0
    secured.wait_for(r"dlkit-test: torch imported", timeout=30)
    assert "dlkit-test: torch imported: False" in secured.lines
    access = [json.loads(line) for line in secured.lines if line.startswith("{")]
    assert any(a["path"] == "/v2/models/cnn-digits/infer" and a["status"] == 200 for a in access)
    assert {"time", "client", "method", "path", "status", "ms", "bytes_in", "bytes_out"} <= set(access[0])


def _content_length(response: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", response, re.I)
    return int(match.group(1)) if match else 1 << 30


def test_cli_refuses_a_repository_without_onnx(repo):
    from click.testing import CliRunner

    from dlkit.cli.group import cli

    result = CliRunner().invoke(cli, ["serve", "--repo", str(repo.root), "--port", "0"])
    assert result.exit_code == 2 and "no model in" in result.output and "dlkit export onnx" in result.output


def test_bind_warning():
    from dlkit.serve import bind_warning

    assert bind_warning("127.0.0.1", None) is None and bind_warning("::1", None) is None
    assert bind_warning("localhost", None) is None and bind_warning("0.0.0.0", "tok") is None
    assert "without a token" in bind_warning("0.0.0.0", None)
    assert "without a token" in bind_warning("example.org", None)


# -- the protocol and the batcher, directly -------------------------------------------------------------
DYNAMIC = [TensorSpec("input", "FP32", (-1, -1, -1))]
OUT = [TensorSpec("y", "FP32", (-1,))]


@pytest.mark.parametrize("binary", [False, True])
def test_absurd_shape_is_refused_before_allocating(binary):
    shape = [10_000, 10_000, 10_000]  # 10^12 elements, every dimension allowed by the model
    if binary:
        header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                         "parameters": {"binary_data_size": 16}}]}).encode()
        body, length = header + bytes(16), str(len(header))
    else:
        body, length = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                               "data": [1.0, 2.0, 3.0, 4.0]}]}).encode(), None
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="1000000000000|needs 4000000000000 bytes"):
            parse_infer_request(body, length, DYNAMIC, OUT, max_batch_size=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_protocol_round_trip_of_every_numeric_datatype():
    from dlkit.serve.protocol import V2_TO_NUMPY

    for datatype, dtype in V2_TO_NUMPY.items():
        spec = [TensorSpec("x", datatype, (-1, 2))]
        values = np.array([[0, 1], [1, 0]], dtype=dtype)
        parsed = parse_infer_request(json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype,
                                                             "data": values.ravel().tolist()}]}).encode(),
                                     None, spec, spec, max_batch_size=4)
        assert parsed.inputs["x"].dtype == dtype and (parsed.inputs["x"] == values).all() and parsed.batch == 2
        body, headers = encode_infer_response("m", 1, None, {"x": values}, parsed.outputs)
        assert json.loads(body)["outputs"][0] == {"name": "x", "datatype": datatype, "shape": [2, 2],
                                                  "data": values.ravel().tolist()}


def test_protocol_fuzz_only_raises_protocol_errors():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    spec = [TensorSpec("input", "FP32", (-1, 2))]
    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5)
    keys = st.sampled_from(["name", "shape", "datatype", "data", "parameters", "binary_data_size", "inputs",
                            "outputs", "id", "binary_data", "binary_data_output"])
    values = scalars | st.lists(scalars | st.lists(scalars, max_size=3), max_size=4) | st.dictionaries(
        keys, scalars | st.lists(scalars, max_size=3), max_size=3)
    tensor = st.fixed_dictionaries({"name": st.sampled_from(["input", "x"]),
                                    "shape": st.lists(st.integers(-1, 5), max_size=3),
                                    "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "x"])},
                                   optional={"data": values, "parameters": values})
    bodies = st.fixed_dictionaries({}, optional={"inputs": st.lists(tensor, max_size=3) | values,
                                                "outputs": values, "id": values, "parameters": values})

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(bodies, st.binary(max_size=64), st.one_of(st.none(), st.integers(-3, 200).map(str)))
    def check(doc, tail, length):
        body = json.dumps(doc).encode()
        try:
            parse_infer_request(body + tail if length else body, length, spec, OUT, max_batch_size=3)
        except ProtocolError:
            pass

    check()


def test_server_fuzz_never_answers_5xx(server):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    good = infer_body(X1)["inputs"][0]
    mutated = st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["input", "x", ""]), "datatype": st.sampled_from(["FP32", "FP64", "BYTES", "BOOL"]),
        "shape": st.lists(st.integers(0, 2**40), max_size=5), "data": st.lists(st.floats() | st.text(max_size=2),
                                                                                max_size=70),
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "binary_data"]),
                                      st.integers(-5, 300) | st.booleans(), max_size=2)}).map(lambda d: {**good, **d})
    bodies = st.fixed_dictionaries({"inputs": st.lists(mutated, max_size=2)}, optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["logits", "probabilities", "x"])},
                                                  optional={"parameters": st.dictionaries(
                                                      st.just("binary_data"), st.booleans() | st.integers())}),
                            max_size=3),
        "parameters": st.dictionaries(st.just("binary_data_output"), st.booleans() | st.integers()),
        "id": st.text(max_size=3) | st.integers()})

    with httpx.Client(base_url=server.url) as http:
        @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
        @hypothesis.given(bodies, st.binary(max_size=300), st.none() | st.integers(-1, 2000))
        def check(doc, tail, header_length):
            content = json.dumps(doc).encode()
            headers = {}
            if header_length is not None:
                headers["inference-header-content-length"] = str(header_length)
                content += tail
            r = http.post("/v2/models/cnn-digits/infer", content=content, headers=headers)
            assert r.status_code in (200, 400, 413), r.text
            assert r.status_code == 200 or "error" in r.json()

        check()
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def _run_batcher(coroutine):
    return asyncio.run(coroutine)


def test_batcher_coalesces_and_a_bad_request_fails_alone():
    calls: list[int] = []
    gate = threading.Event()

    def run(feeds):
        gate.wait(30)
        x = feeds["x"]
        calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2}

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=8, max_queue_delay_ms=0, max_queue_size=16)
            batcher.start()
            first = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2), np.float32)}, 1))
            for _ in range(100):  # bounded: until the first batch is running (holding the gate)
                await asyncio.sleep(0)
                if batcher._busy:
                    break
            xs = [np.full((n, 2), v, np.float32) for n, v in ((2, 1.0), (1, -1.0), (3, 5.0))]
            rest = [asyncio.ensure_future(batcher.infer({"x": x}, len(x))) for x in xs]
            await asyncio.sleep(0)
            gate.set()
            results = await asyncio.gather(first, *rest, return_exceptions=True)
            await batcher.close()
            return xs, results

    xs, results = _run_batcher(main())
    assert calls[:2] == [1, 6]  # the first alone, then the three waiting ones as one batch
    assert (results[1][0]["y"] == xs[0] * 2).all() and (results[3][0]["y"] == xs[2] * 2).all()
    assert isinstance(results[2], ValueError)  # only the bad one failed, after its batch was split


def test_batcher_waits_only_for_requests_on_their_way():
    calls: list[int] = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return feeds

    async def spin_until(predicate) -> bool:
        for _ in range(200):  # bounded by loop iterations, not by time
            if predicate():
                return True
            await asyncio.sleep(0)
        return False

    async def main():
        with ThreadPoolExecutor(1) as pool:
            # A delay far longer than the test: if the batcher waited for it, nothing would run.
            batcher = DynamicBatcher(run, pool, max_batch_size=8, max_queue_delay_ms=600_000)
            batcher.start()
            x = {"x": np.zeros((1, 1), np.float32)}
            alone = asyncio.ensure_future(batcher.infer(x, 1))
            assert await spin_until(lambda: batcher._busy or alone.done())  # nobody arriving: no wait
            await alone
            with batcher.arriving():  # a body is being received: the batcher waits for it
                first = asyncio.ensure_future(batcher.infer(x, 1))
                assert not await spin_until(lambda: batcher._busy or first.done())
                second = asyncio.ensure_future(batcher.infer(x, 1))
                await asyncio.sleep(0)
            await asyncio.gather(first, second)
            await batcher.close()

    _run_batcher(main())
    assert calls == [1, 2]


def test_batcher_answers_queue_full_at_once():
    gate = threading.Event()

    def run(feeds):
        gate.wait(30)
        return feeds

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=4, max_queue_size=2)
            batcher.start()
            x = {"x": np.zeros((1, 1), np.float32)}
            running = asyncio.ensure_future(batcher.infer(x, 1))
            for _ in range(100):
                await asyncio.sleep(0)
                if batcher._busy:
                    break
            queued = [asyncio.ensure_future(batcher.infer(x, 1)) for _ in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="max-queue-size 2"):
                await batcher.infer(x, 1)
            gate.set()
            await asyncio.gather(running, *queued)
            await batcher.close()

    _run_batcher(main())
