"""Many clients at once, the bearer token, graceful shutdown, and the CLI around the server."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from serve_helpers import TOKEN, ServerProcess, _raw, close, digits, infer_body  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

X1 = digits(1)


@pytest.fixture(scope="module")
def secured(exported_repo):
    """One model behind a bearer token given through DLKIT_TOKEN, without dynamic batching."""
    srv = ServerProcess(exported_repo, "--models", "cnn-digits", "--no-batching", env={"DLKIT_TOKEN": TOKEN})
    yield srv
    srv.stop()


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


