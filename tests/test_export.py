"""``dlkit export onnx``: parity with torch, metadata, the Triton config, and refusals that write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trained_models import TRAINED
from google.protobuf import text_format

from dlkit.errors import DlkitError, InputError
from dlkit.testing import run_cli

TOL = 1e-4


def torch_logits(version, x: np.ndarray) -> np.ndarray:
    import torch

    from dlkit.training.build import load_model

    module, _ = load_model(version)
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_export_matches_torch(trained, name):
    """Every trained classifier (LSTM and GRU included) exports within 1e-4 of torch at batch 1 and 37."""
    from dlkit.infer.evaluate import evaluate, evaluation_data
    from dlkit.infer.session import Session

    result = run_cli("export", "onnx", name, "--json")
    report = result.json()
    version = trained.resolve(name)  # fresh: meta.json re-read
    assert report["max_abs_diff"] <= TOL
    assert {c["case"] for c in report["parity"]["cases"]} >= {
        "data batch 1", "data batch 37", "random batch 1", "random batch 37"}
    # Checked here again, independently of the export's own check, on real test samples.
    x, _ = evaluation_data(version).split("test")
    session = Session(version.onnx_path, "cpu")
    for batch in (1, 37):
        got = session.run({"input": x[:batch]})
        want = torch_logits(version, x[:batch])
        assert got["logits"].shape == (batch, 10)
        np.testing.assert_allclose(got["logits"], want, atol=TOL, rtol=0)
        np.testing.assert_allclose(got["probabilities"].sum(1), 1.0, atol=1e-5)
    # One self-contained file, recorded in meta.json, described in its metadata.
    assert sorted(p.name for p in version.path.iterdir() if "onnx" in p.name) == ["model.onnx"]
    assert [i.shape for i in session.inputs] == [(None, 1, 8, 8)]
    assert [o.name for o in session.outputs] == ["logits", "probabilities"]
    record = version.meta["onnx"]
    assert record["max_abs_diff"] == report["max_abs_diff"] and record["exporter"] == report["exporter"]
    assert record["opset"] == report["opset"] >= 17 and record["bytes"] == version.onnx_path.stat().st_size
    md = session.metadata
    assert md["arch"] == version.meta["arch"] and md["model"] == name and md["version"] == version.version
    assert md["labels"] == [str(i) for i in range(10)] and md["task"] == "classification"
    assert md["input_spec"]["shape"] == [1, 8, 8] and md["dlkit_version"]
    assert md["preprocessing"]["image"] == {"mode": "L", "width": 8, "height": 8, "range": [0.0, 1.0],
                                            "layout": "NCHW", "resample": "bilinear"}
    # evaluate --runtime onnx gives torch's accuracy.
    accuracy = {rt: evaluate(version, runtime=rt)["accuracy"] for rt in ("torch", "onnx")}
    assert accuracy["onnx"] == accuracy["torch"]


def test_triton_config(trained):
    """config.pbtxt: onnxruntime platform, implicit batch dimension, the exported versions only."""
    from dlkit.export.onnx import export_onnx

    version = trained.resolve("mlp-digits")
    report = export_onnx(version, exporter="torchscript")
    text = (trained.root / "mlp-digits" / "config.pbtxt").read_text()
    assert report["config"] == str(trained.root / "mlp-digits" / "config.pbtxt")
    assert 'name: "mlp-digits"' in text and 'platform: "onnxruntime_onnx"' in text
    assert "max_batch_size: 64" in text and f"versions: [ {version.version} ]" in text
    flat = " ".join(text.split())
    assert 'name: "input" data_type: TYPE_FP32 dims: [ 1, 8, 8 ]' in flat
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ 10 ]' in flat
    assert 'name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ]' in flat
    # and Triton's own schema reads it
    config = text_format.Parse(text, triton_model_config())
    assert (config.platform, config.max_batch_size, list(config.input[0].dims)) == ("onnxruntime_onnx", 64, [1, 8, 8])


def triton_model_config():
    """An empty ``inference.ModelConfig`` message, from the schema file tritonclient ships
    (loaded by path: its grpc package refuses to import without the grpc extra)."""
    import importlib.util
    from pathlib import Path

    import tritonclient

    path = Path(tritonclient.__path__[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig()


def test_rnn_on_sequences_takes_any_length(repo):
    """An RNN trained on the waves sequences exports with dynamic batch *and* sequence length."""
    from dlkit.export.onnx import export_onnx
    from dlkit.infer.predict import predict
    from dlkit.store.recipe import Recipe
    from dlkit.infer.session import Session
    from dlkit.training.run import train

    recipe = Recipe(arch="rnn", name="waves-gru", data={"source": "waves"},
                    model={"cell": "gru", "hidden": 8}, train={"epochs": 1, "patience": 0})
    version = train(recipe, repo, quiet=True).version
    report = export_onnx(version)
    assert report["max_abs_diff"] <= TOL
    assert "random batch 37 length 21" in {c["case"] for c in report["parity"]["cases"]}
    session = Session(version.onnx_path, "cpu")
    assert session.inputs[0].shape == (None, None, 2)
    rng = np.random.default_rng(3)
    for batch, length in [(1, 16), (37, 16), (37, 5), (3, 40)]:
        x = rng.uniform(-1.5, 1.5, size=(batch, length, 2)).astype(np.float32)
        np.testing.assert_allclose(session.run({"input": x})["logits"], torch_logits(version, x), atol=TOL, rtol=0)
    # predict takes a sequence of another length too
    path = repo.root / "seq.npy"
    np.save(path, x[0])
    assert predict(version, [str(path)], "cpu")["predictions"][0]["label"] in ("slow", "medium", "fast")


def test_old_opset_uses_the_tracer(trained):
    report = run_cli("export", "onnx", "mlp-digits", "--opset", "13", "--json").json()
    assert (report["opset"], report["exporter"]) == (13, "torchscript") and report["max_abs_diff"] <= TOL


def test_parity_failure_writes_nothing(trained):
    """Above the tolerance the export fails with the number, and neither model.onnx nor meta changes."""
    from dlkit.export.onnx import export_onnx

    version = trained.resolve("mlp-digits")
    meta_before = (version.path / "meta.json").read_bytes()
    with pytest.raises(DlkitError, match=r"max abs difference [0-9.e-]+ > 0") as info:
        export_onnx(version, exporter="torchscript", tolerance=0.0)
    assert not isinstance(info.value, InputError)
    assert not version.has_onnx() and not (trained.root / "mlp-digits" / "config.pbtxt").exists()
    assert (version.path / "meta.json").read_bytes() == meta_before
    assert [p.name for p in version.path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_bad_exports_exit_2(trained):
    version = trained.resolve("cnn-digits")
    version.weights_path.unlink()
    out = run_cli("export", "onnx", "cnn-digits", expect=2)
    assert "no PyTorch weights" in out.stderr and "Traceback" not in out.stderr
    assert not version.has_onnx()
    assert "has no version 9" in run_cli("export", "onnx", "mlp-digits:9", expect=2).stderr
    assert "no model 'nope'" in run_cli("export", "onnx", "nope", expect=2).stderr
    assert "--opset must be between" in run_cli("export", "onnx", "mlp-digits", "--opset", "99", expect=2).stderr
    assert not trained.resolve("mlp-digits").has_onnx()


def test_json_is_one_object_on_stdout(trained):
    out = run_cli("export", "onnx", "mlp-digits", "--exporter", "torchscript", "--json")
    assert json.loads(out.stdout)["exporter"] == "torchscript" and out.stdout.count("\n") == 1


def _baked_batch_model(hparams, input_spec, num_classes):
    """A model that reads its batch size through a tensor (``.tolist()``): the tracer records
    the traced size as a constant (a graph right only at that size), torch.export keeps it
    symbolic."""
    import torch

    class BakedBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, num_classes)

        def forward(self, x):
            return self.linear(x.reshape(torch.tensor(x.shape).tolist()[0], 64))

    return BakedBatch()


@pytest.fixture
def baked_arch():
    from dlkit.plugins import get_registry
    from dlkit.registry import ModelSpec

    registry = get_registry()
    registry.add("model", ModelSpec("baked-batch", _baked_batch_model, frozenset({"image"}), plugin="test-baked"))
    yield "baked-batch"
    registry.remove_plugin("test-baked")


def test_auto_falls_back_to_dynamo_when_the_trace_is_wrong(repo, baked_arch, capsys):
    """The tracer's graph fails parity at batch 37, so auto exports with dynamo instead."""
    from dlkit.export.onnx import export_onnx
    from dlkit.store.recipe import Recipe
    from dlkit.training.run import train

    version = train(Recipe(arch=baked_arch, name="baked", train={"epochs": 1}), repo, quiet=True).version
    report = export_onnx(version)
    assert report["exporter"] == "dynamo" and report["max_abs_diff"] <= TOL
    assert "torchscript exporter" in capsys.readouterr().err
    with pytest.raises(DlkitError, match="torchscript exporter"):
        export_onnx(version, exporter="torchscript")
    assert version.onnx_path.is_file()  # the failed re-export left the good file alone
