"""A stalled upload must not hold other clients' batches: against a real `dlkit serve` process,
with the statistics extension's cumulative queue time as the witness (no timing threshold: the
batcher's wait is a lower bound, so requests held for the stalled body queue at least the delay
each, while requests not held stay far below one delay in total)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from serve_helpers import ServerProcess, digits, infer_body

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")

DELAY_MS = 3000
REQUESTS = 3


def _in_flight(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    line = next(line for line in text.splitlines() if line.startswith("dlkit_http_requests_in_flight"))
    return int(float(line.split()[-1]))


def test_a_stalled_upload_does_not_hold_other_clients_batches(mlp_exported_repo):
    srv = ServerProcess(mlp_exported_repo, "--models", "mlp-digits", "--max-queue-delay-ms", str(DELAY_MS),
                        "--body-timeout", "600")
    body = json.dumps(infer_body(digits(1))).encode()
    head = (f"POST /v2/models/mlp-digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as stalled:
            stalled.sendall(head + body[:50])  # and no more: the body is on its way for minutes
            for _ in range(600):  # bounded: until its handler runs (the /metrics request counts itself too)
                if _in_flight(srv.url) >= 2:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the stalled request never reached its handler")
            time.sleep(DELAY_MS / 1000 * 1.5)  # a wait, not a threshold: the stalled body is older than the delay
            client = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}", network_timeout=120)
            x = digits(2)
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            for _ in range(REQUESTS):  # one after another: each is a lone request, a batch of its own
                assert client.infer("mlp-digits", [tensor]).as_numpy("probabilities").shape == (2, 10)
            s = client.get_inference_statistics("mlp-digits")["model_stats"][0]
            assert s["inference_stats"]["queue"]["count"] == REQUESTS and s["execution_count"] == REQUESTS
            # Held for the stalled body, each would have queued >= DELAY_MS: together >= REQUESTS delays.
            assert s["inference_stats"]["queue"]["ns"] < DELAY_MS * 1_000_000, s["inference_stats"]["queue"]
            stalled.sendall(body[50:])  # the stalled client finishes and is answered too
            assert stalled.recv(12).startswith(b"HTTP/1.1 200")
    finally:
        assert srv.stop() == 0
