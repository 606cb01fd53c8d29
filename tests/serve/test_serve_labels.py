"""labels.txt and label_filename: `dlkit export onnx` writes them as Triton reads them, and a real
`dlkit serve` process takes its labels from the same file (meta.json's when config.pbtxt names none)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import text_format
from serve_helpers import ServerProcess, digits

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")

OTHER = ["nil", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"]


def _triton_schema():
    """Triton's ModelConfig message from the schema tritonclient ships (loaded by path)."""
    import importlib.util
    from pathlib import Path

    import tritonclient

    path = Path(tritonclient.__path__[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2_labels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig()


def test_export_writes_labels_txt_and_label_filename(exported_repo):
    from dlkit.store.repository import ModelRepository

    folder = exported_repo / "cnn-digits"
    meta = ModelRepository(exported_repo).resolve("cnn-digits").meta
    assert (folder / "labels.txt").read_text().splitlines() == [str(label) for label in meta["labels"]]
    config = text_format.Parse((folder / "config.pbtxt").read_text(), _triton_schema())  # Triton's own schema
    assert {o.name: o.label_filename for o in config.output} == {"logits": "labels.txt",
                                                                 "probabilities": "labels.txt"}


def _classify(srv, k=3):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")
    x = digits(2)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp-digits", [tensor],
                          outputs=[httpclient.InferRequestedOutput("probabilities", class_count=k)])
    labels = [[s.decode().split(":")[2] for s in row] for row in result.as_numpy("probabilities")]
    return client, labels


def test_the_server_reads_the_label_file_config_pbtxt_names(mlp_exported):
    folder = mlp_exported.root / "mlp-digits"
    (folder / "labels.txt").write_text("\n".join(OTHER) + "\n")  # edited after export: Triton would use it
    srv = ServerProcess(mlp_exported.root, "--models", "mlp-digits")
    try:
        client, labels = _classify(srv)
        assert all(label in OTHER for row in labels for label in row)
        outputs = {o["name"]: o.get("label_filename") for o in client.get_model_config("mlp-digits")["output"]}
        assert outputs == {"logits": "labels.txt", "probabilities": "labels.txt"}
        assert client.get_model_metadata("mlp-digits")["parameters"]["labels"] == OTHER
    finally:
        assert srv.stop() == 0


def test_without_label_filename_the_labels_come_from_meta_json(mlp_exported):
    folder = mlp_exported.root / "mlp-digits"
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace('label_filename: "labels.txt"', ""))
    (folder / "labels.txt").write_text("\n".join(OTHER) + "\n")  # not named: not read
    srv = ServerProcess(mlp_exported.root, "--models", "mlp-digits")
    try:
        client, labels = _classify(srv)
        meta_labels = [str(label) for label in mlp_exported.resolve("mlp-digits").meta["labels"]]
        assert all(label in meta_labels for row in labels for label in row)
        assert all("label_filename" not in o for o in client.get_model_config("mlp-digits")["output"])
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("name, fault", [("../../../etc/passwd", "must be a file name"),
                                         ("missing.txt", "cannot be read")])
def test_a_bad_label_filename_is_one_line_and_exit_2(mlp_exported, name, fault):
    config = mlp_exported.root / "mlp-digits" / "config.pbtxt"
    config.write_text(config.read_text().replace('label_filename: "labels.txt"', f'label_filename: "{name}"'))
    proc = subprocess.run([sys.executable, "-m", "dlkit", "serve", "--repo", str(mlp_exported.root), "--port", "0",
                           "--grpc-port", "0", "--models", "mlp-digits"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert fault in proc.stderr and "Traceback" not in proc.stderr
