"""Issue 13's server findings, each against a real `dlkit serve` process that must stay healthy:
zero-sized tensors, stalled and idle connections, too many bytes at once, bodies no valid request
can have, hostile models, odd versions and integers, clients that leave mid-upload."""

from __future__ import annotations

import json
import shutil
import socket
import time

import httpx
import pytest
from serve_helpers import MODELS, ServerProcess, _raw, digits, infer_body

LIMITS = ["--max-request-bytes", "2000000", "--max-inflight-bytes", "2000000", "--header-timeout", "1",
          "--body-timeout", "2", "--max-connections", "40"]


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def limited(exported_repo):
    """Every model, with short timeouts and small limits, so that the tests finish quickly."""
    srv = ServerProcess(exported_repo, *LIMITS)
    yield srv
    srv.stop()


def _open(port: int, head: str = "", body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if head or body:
        sock.sendall(head.encode() + body)
    return sock


def _post_head(path: str, length: int) -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n")


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by the socket timeout and a byte count)."""
    data = b""
    try:
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.mark.parametrize("shape", [[0, 1, 8, 8], [1, 0, 8, 8], [2, 1, 0, 8]])
def test_zero_sized_tensors_are_refused_for_every_model(server, shape):
    for name in MODELS:  # LSTM/GRU kernels call std::terminate on batch 0: the server would die
        r = httpx.post(f"{server.url}/v2/models/{name}/infer", timeout=30,
                       json={"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]})
        assert r.status_code == 400 and "positive integers" in r.json()["error"], (name, r.text)
    assert healthy(server.url)


def test_odd_versions_and_huge_integers_are_4xx(server):
    for version in ("%C2%B2", "%D9%A1", "1%C2%B2", "99999999999999999999999"):
        for suffix in ("", "/ready", "/config"):
            r = httpx.get(f"{server.url}/v2/models/cnn-digits/versions/{version}{suffix}", timeout=30)
            assert r.status_code == 404 and "no served version" in r.json()["error"], (version, r.text)
    body = b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [' + b"7" * 4301 + b"]}]}"
    r = httpx.post(f"{server.url}/v2/models/cnn-digits/infer", content=body, timeout=30)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"], r.text
    assert healthy(server.url)


def test_idle_connections_are_closed_and_health_answers(limited):
    idle = [_open(limited.port) for _ in range(60)]  # more than --max-connections
    try:
        for sock in idle:  # each is closed by the server after --header-timeout, not held forever
            assert _read_all(sock) == b""
        assert healthy(limited.url)
    finally:
        for sock in idle:
            sock.close()


def test_headers_trickling_are_cut_off(limited):
    sock = _open(limited.port, "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    with sock:
        sock.settimeout(60)  # far beyond the 1 s deadline: a timeout here means it was never cut
        assert _read_all(sock) == b""  # closed at the header deadline, without an answer
    assert healthy(limited.url)


def test_a_stalled_body_gets_408(limited):
    body = _raw(infer_body(digits(1)))
    with _open(limited.port, _post_head("/v2/models/cnn-digits/infer", len(body)), body[:50]) as sock:
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"--body-timeout" in response
    assert healthy(limited.url)


def test_in_flight_bytes_are_capped(limited):
    # One 1.2 MB upload in progress holds 1.2 of the 2 MB: a second one is refused at once.
    with _open(limited.port, _post_head("/v2/models/mlp-digits/infer", 1_200_000), b"{") as first:
        for _ in range(200):  # bounded: until the server has reserved the first body
            with _open(limited.port, _post_head("/v2/models/cnn-digits/infer", 1_200_000), b"{") as second:
                response = _read_all(second)
            if response.startswith(b"HTTP/1.1 503"):
                break
            time.sleep(0.05)
        assert response.startswith(b"HTTP/1.1 503") and b"max-inflight-bytes" in response, response[:300]
        first.close()
    after = httpx.post(f"{limited.url}/v2/models/cnn-digits/infer", json=infer_body(digits(2)), timeout=30)
    assert after.status_code == 200


def test_a_body_larger_than_any_valid_request_is_refused_unread(limited):
    # Under --max-request-bytes, but far more than 64 rows of 64 numbers can take as JSON.
    size = 1_900_000
    with _open(limited.port, _post_head("/v2/models/mlp-digits/infer", size), b"{") as sock:
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 413") and b"larger than any valid request" in response, response[:300]
    assert healthy(limited.url)


def test_a_client_leaving_mid_upload_logs_one_line(limited):
    body = _raw(infer_body(digits(1)))
    before = len(limited.lines)
    with _open(limited.port, _post_head("/v2/models/cnn-digits/infer", len(body)), body[:40]):
        time.sleep(0.2)
    limited.wait_for("disconnected before sending the whole request body", timeout=30)
    assert healthy(limited.url)
    assert not any("Traceback" in line for line in limited.lines[before:]), "\n".join(limited.lines[before:])


def _hostile_copy(exported_repo, tmp_path):
    """The repository with two extra models whose ONNX metadata is hostile."""
    onnx = pytest.importorskip("onnx")
    root = tmp_path / "models"
    shutil.copytree(exported_repo, root)
    for name, value in (("deep-meta", "[" * 100_000 + "]" * 100_000), ("long-int", "9" * 5000)):
        shutil.copytree(root / "mlp-digits", root / name)
        path = root / name / "1" / "model.onnx"
        model = onnx.load(path)
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "labels": value})
        onnx.save(model, path)
        meta = json.loads((root / name / "1" / "meta.json").read_text())
        (root / name / "1" / "meta.json").write_text(json.dumps({**meta, "name": name}))
    return root


def test_hostile_models_are_skipped_and_the_others_served(exported_repo, tmp_path):
    srv = ServerProcess(_hostile_copy(exported_repo, tmp_path))
    try:
        warnings = [line for line in srv.lines if "warning: skipping" in line]
        assert any("deep-meta" in w for w in warnings) and any("long-int" in w for w in warnings), srv.lines
        assert httpx.post(f"{srv.url}/v2/models/mlp-digits/infer", json=infer_body(digits(1)),
                          timeout=30).status_code == 200
        assert httpx.get(f"{srv.url}/v2/models/deep-meta", timeout=30).status_code == 404
    finally:
        assert srv.stop() == 0


def test_the_header_deadline_runs_on_httptools_and_still_cuts_off_trickling_headers(limited):
    # httptools (uvicorn's C parser) is the protocol the server runs: the header deadline must
    # hold on it, as on h11 (test_headers_trickling_are_cut_off checks the behaviour on this server).
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from dlkit.serve.server import _header_deadline_protocol

    assert issubclass(_header_deadline_protocol(1.0), HttpToolsProtocol)
