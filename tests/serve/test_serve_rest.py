"""The REST transport over real HTTP on loopback, with unmodified tritonclient.http: results, metadata, every error."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from serve_helpers import MAX_BATCH, MAX_BYTES, MODELS, _raw, close, digits, infer_body  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

X1 = digits(1)


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


@pytest.mark.parametrize("model", MODELS)
def test_server_fuzz_never_answers_5xx(server, model):
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
        @hypothesis.settings(max_examples=40 if model == "cnn-digits" else 25, deadline=None, derandomize=True)
        @hypothesis.given(bodies, st.binary(max_size=300), st.none() | st.integers(-1, 2000))
        def check(doc, tail, header_length):
            content = json.dumps(doc).encode()
            headers = {}
            if header_length is not None:
                headers["inference-header-content-length"] = str(header_length)
                content += tail
            r = http.post(f"/v2/models/{model}/infer", content=content, headers=headers)
            assert r.status_code in (200, 400, 413), r.text
            assert r.status_code == 200 or "error" in r.json()

        check()
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


