"""Triton's extensions that tritonclient calls, over REST and gRPC against one real server:
statistics (counts and cumulative ns per phase) and HEAD on the health endpoints."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import ServerProcess, digits, free_port

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def both(exported_repo):
    port = free_port()
    srv = ServerProcess(exported_repo, "--models", "mlp-digits,cnn-digits", "--grpc-port", str(port))
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    srv.stop()


def test_head_on_health(both):
    for path in ("/v2/health/live", "/v2/health/ready"):
        r = httpx.head(both.url + path, timeout=30)
        assert r.status_code == 200 and r.content == b""


def test_statistics_over_rest_and_grpc(both):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{both.port}")
    grpc = grpcclient.InferenceServerClient(both.grpc)
    x = digits(3)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(2):
        http.infer("mlp-digits", [tensor])
    gtensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    gtensor.set_data_from_numpy(x)
    grpc.infer("mlp-digits", [gtensor])
    bad = httpclient.InferInput("input", [1, 8, 8], "FP32")
    bad.set_data_from_numpy(x[0])
    with pytest.raises(InferenceServerException):
        http.infer("mlp-digits", [bad])

    stats = http.get_inference_statistics("mlp-digits")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("mlp-digits", "1")]
    s = stats[0]
    assert s["inference_count"] == 9 and s["execution_count"] >= 1 and s["last_inference"] > 0
    phases = s["inference_stats"]
    assert phases["success"]["count"] == 3 and phases["success"]["ns"] > 0
    assert phases["fail"]["count"] == 1 and phases["queue"]["count"] == 3
    assert phases["compute_infer"]["count"] == s["execution_count"]
    assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"]
    assert {m["name"] for m in http.get_inference_statistics()["model_stats"]} == {"mlp-digits", "cnn-digits"}

    g = grpc.get_inference_statistics("mlp-digits", as_json=True)["model_stats"][0]
    assert g["name"] == "mlp-digits" and int(g["inference_count"]) == 9
    assert int(g["inference_stats"]["success"]["count"]) == 3
    with pytest.raises(InferenceServerException, match="unknown model") as info:
        grpc.get_inference_statistics("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert httpx.get(f"{both.url}/v2/models/nope/stats", timeout=30).status_code == 404
    assert httpx.get(f"{both.url}/v2/models/mlp-digits/versions/%C2%B2/stats", timeout=30).status_code == 404
