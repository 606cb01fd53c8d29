"""Triton's classification extension and label names, with unmodified tritonclient.http (binary
and JSON) and tritonclient.grpc against a real `dlkit serve` process."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
from serve_helpers import ServerProcess, digits, free_port, infer_body

from dlkit.export.triton import write_triton_config
from dlkit.store.repository import ModelRepository

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def labelled(mlp_exported_repo, tmp_path_factory):
    """mlp-digits with label names that differ from the class indices."""
    root = tmp_path_factory.mktemp("labelled") / "models"
    shutil.copytree(mlp_exported_repo, root)
    meta_path = root / "mlp-digits" / "1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = NAMES
    meta_path.write_text(json.dumps(meta))
    # What `dlkit export onnx` writes from meta.json: config.pbtxt and labels.txt, which the server reads.
    write_triton_config(ModelRepository(root).resolve("mlp-digits:1"))
    port = free_port()
    srv = ServerProcess(root, "--models", "mlp-digits", "--grpc-port", str(port))
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    srv.stop()


def _expected(scores: np.ndarray, k: int) -> list[list[tuple[float, int, str]]]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(float(row[i]), int(i), NAMES[i]) for i in idx] for row, idx in zip(scores, order)]


def _parsed(strings: np.ndarray) -> list[list[tuple[float, int, str]]]:
    rows = []
    for row in strings:
        entries = []
        for s in row:
            score, index, label = (s.decode() if isinstance(s, bytes) else s).split(":")
            entries.append((float(score), int(index), label))
        rows.append(entries)
    return rows


def _check(strings: np.ndarray, scores: np.ndarray, k: int) -> None:
    assert strings.shape == (scores.shape[0], k)
    got, want = _parsed(strings), _expected(scores, k)
    for g_row, w_row in zip(got, want):
        assert [(i, label) for _, i, label in g_row] == [(i, label) for _, i, label in w_row]
        np.testing.assert_allclose([s for s, _, _ in g_row], [s for s, _, _ in w_row], atol=2e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_over_rest(labelled, offline, binary):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{labelled.port}")
    x = digits(4, seed=3)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
               httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=2)]
    result = client.infer("mlp-digits", [tensor], outputs=outputs)
    expected = offline("mlp-digits", x)
    assert result.get_output("probabilities")["datatype"] == "BYTES"
    _check(result.as_numpy("probabilities"), expected["probabilities"], 3)
    _check(result.as_numpy("logits"), expected["logits"], 2)


def test_classification_over_grpc_and_more_than_the_classes(labelled, offline):
    client = grpcclient.InferenceServerClient(labelled.grpc)
    x = digits(2, seed=5)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp-digits", [tensor],
                          outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=50)])
    _check(result.as_numpy("probabilities"), offline("mlp-digits", x)["probabilities"], 10)  # at most the classes


def test_labels_in_metadata_and_config(labelled):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{labelled.port}")
    meta = http.get_model_metadata("mlp-digits")
    assert meta["parameters"]["labels"] == NAMES
    assert set(meta["parameters"]["label_outputs"]) == {"probabilities", "logits"}
    grpc_client = grpcclient.InferenceServerClient(labelled.grpc)
    for config in (http.get_model_config("mlp-digits"),
                   grpc_client.get_model_config("mlp-digits", as_json=True)["config"]):
        assert json.loads(config["parameters"]["labels"]["string_value"]) == NAMES


@pytest.mark.parametrize("value", ["3", -1, 1.5, True])
def test_bad_classification_parameter(labelled, value):
    body = infer_body(digits(1), outputs=[{"name": "probabilities", "parameters": {"classification": value}}])
    r = httpx.post(f"{labelled.url}/v2/models/mlp-digits/infer", json=body, timeout=30)
    assert r.status_code == 400 and "classification must be a positive integer" in r.json()["error"]
