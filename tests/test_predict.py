"""``dlkit predict``: arrays, images and CSV rows through onnxruntime, without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dlkit.testing import run_cli


def _has_provider(name: str) -> bool:
    import onnxruntime as ort

    return name in ort.get_available_providers()


@pytest.fixture(scope="module")
def digits():
    """Test-split digits, quantised to 8-bit pixels so an image file holds exactly the same values."""
    from dlkit.data.load import load_dataset

    x, y = load_dataset("digits").split("test")
    return np.round(x[:6] * 255) / 255, y[:6]


def onnx_labels(version, x: np.ndarray) -> list[str]:
    from dlkit.infer.session import Session

    probs = Session(version.onnx_path, "cpu").run({"input": x.astype(np.float32)})["probabilities"]
    return [str(i) for i in probs.argmax(1)]


def test_arrays_images_and_csv(mlp_exported, digits, tmp_path):
    """One sample, a batch, an .npz, a PNG, a JPEG in colour at another size, and CSV rows."""
    from PIL import Image

    x, _ = digits
    version = mlp_exported.resolve("mlp-digits")
    expected = onnx_labels(version, x)
    np.save(tmp_path / "one.npy", x[0])
    np.save(tmp_path / "batch.npy", x[:3])
    np.savez(tmp_path / "more.npz", x=x[3:5])
    Image.fromarray((x[5, 0] * 255).astype(np.uint8), "L").save(tmp_path / "five.png")
    Image.fromarray((x[1, 0] * 255).astype(np.uint8), "L").convert("RGB").resize((40, 40)).save(tmp_path / "big.jpg")
    (tmp_path / "rows.csv").write_text(
        ",".join(f"p{i}" for i in range(64)) + "\n" + "\n".join(",".join(map(str, r.ravel())) for r in x[:2]) + "\n")
    files = ["one.npy", "batch.npy", "more.npz", "five.png", "rows.csv", "big.jpg"]
    out = run_cli("predict", "mlp-digits", *[tmp_path / f for f in files], "--top-k", "2", "--json").json()
    preds = out["predictions"]
    assert out["providers"][0] == "CPUExecutionProvider" and (out["model"], out["version"]) == ("mlp-digits", 1)
    assert [p["input"].rsplit("/", 1)[-1] for p in preds[:9]] == [
        "one.npy", "batch.npy[0]", "batch.npy[1]", "batch.npy[2]", "more.npz:x[0]", "more.npz:x[1]",
        "five.png", "rows.csv[0]", "rows.csv[1]"]
    want = [expected[i] for i in (0, 0, 1, 2, 3, 4, 5, 0, 1)]
    assert [p["label"] for p in preds[:9]] == want
    for p in preds:
        assert len(p["top_k"]) == 2 and p["top_k"][0]["label"] == p["label"]
        assert p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]
    assert preds[-1]["label"] in version.meta["labels"]  # resized and converted from RGB
    human = run_cli("predict", "mlp-digits", tmp_path / "five.png")
    assert "five.png" in human.stdout and expected[5] in human.stdout


def test_bad_inputs_exit_2_with_one_line(mlp_exported, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 8, 8), np.float32))
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "short.csv").write_text("1,2,3\n")
    (tmp_path / "notes.txt").write_text("hello")
    cases = {
        "wrong.npy": "shape (2, 8, 8) does not fit model input 'input': expected (1, 8, 8) or (N, 1, 8, 8)",
        "text.npy": "dtype <U1 does not fit model input 'input': expected float32",
        "broken.png": "cannot decode image",
        "short.csv": "3 columns do not fit model input 'input': expected 64 numbers per row",
        "notes.txt": "unsupported input type '.txt'",
        "missing.npy": "no such file",
    }
    for name, message in cases.items():
        out = run_cli("predict", "mlp-digits", tmp_path / name, expect=2)
        assert message in out.stderr and f"{name}" in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1 and out.stdout == ""


def test_missing_or_corrupt_onnx_exit_2(mlp_exported, tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((1, 8, 8), np.float32))
    out = run_cli("predict", "cnn-digits", tmp_path / "one.npy", expect=2)
    assert "run `dlkit export onnx cnn-digits:1` first" in out.stderr
    onnx_path = mlp_exported.resolve("mlp-digits").onnx_path
    onnx_path.write_bytes(onnx_path.read_bytes()[:2000])  # truncated
    for args in (["predict", "mlp-digits", tmp_path / "one.npy"], ["evaluate", "mlp-digits", "--runtime", "onnx"],
                 ["bench", "mlp-digits", "--runtimes", "onnx"]):
        out = run_cli(*args, expect=2)
        assert "onnxruntime cannot load it" in out.stderr and "Traceback" not in out.stderr


def test_predict_imports_neither_torch_nor_sklearn(mlp_exported, tmp_path):
    """The Python API and the command, in a fresh process: neither pulls in torch or sklearn."""
    np.save(tmp_path / "one.npy", np.zeros((1, 8, 8), np.float32))
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "blank.png")
    code = f"""
import json, sys
from dlkit.infer.predict import predict
from dlkit.store.repository import ModelRepository
from dlkit.cli.group import main
result = predict(ModelRepository({str(mlp_exported.root)!r}).resolve("mlp-digits"), [{str(tmp_path / "one.npy")!r}])
try:
    main(["predict", "mlp-digits", {str(tmp_path / "blank.png")!r}, "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sklearn", "scipy"))
print(json.dumps({{"heavy": heavy, "label": result["predictions"][0]["label"]}}), file=sys.stderr)
"""
    env = {**os.environ, "DLKIT_REPO": str(mlp_exported.root)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["heavy"] == [] and report["label"] in [str(i) for i in range(10)]
    assert json.loads(proc.stdout)["predictions"][0]["input"].endswith("blank.png")


@pytest.mark.skipif(_has_provider("CUDAExecutionProvider"), reason="this machine has CUDA: no fallback to see")
def test_unavailable_provider_falls_back_or_fails_when_strict(mlp_exported, tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((1, 8, 8), np.float32))
    out = run_cli("predict", "mlp-digits", tmp_path / "one.npy", "--provider", "cuda", "--json")
    assert "falling back to CPUExecutionProvider" in out.stderr
    assert out.json()["providers"] == ["CPUExecutionProvider"]
    strict = run_cli("predict", "mlp-digits", tmp_path / "one.npy", "--provider", "cuda", "--strict-provider", expect=2)
    assert "provider 'cuda' is not available here" in strict.stderr


def test_providers_command():
    from dlkit.infer.session import available_providers

    out = run_cli("providers", "--json").json()
    assert out["available"] == available_providers() and out["auto"][-1] == "CPUExecutionProvider"
    assert out["auto"][0] in out["available"]
    assert "CPUExecutionProvider" in run_cli("providers").stdout


# -- GPU (skipped without one; see docs/gpu.md) ----------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("provider, name", [("cuda", "CUDAExecutionProvider"),
                                            ("tensorrt", "TensorrtExecutionProvider")])
def test_gpu_provider_predicts_like_cpu(mlp_exported, digits, tmp_path, provider, name):
    if not _has_provider(name):
        pytest.skip(f"{name} is not available (install the gpu extra on a machine with a GPU)")
    x, _ = digits
    np.save(tmp_path / "batch.npy", x)
    cpu = run_cli("predict", "mlp-digits", tmp_path / "batch.npy", "--provider", "cpu", "--json").json()
    gpu = run_cli("predict", "mlp-digits", tmp_path / "batch.npy", "--provider", provider, "--strict-provider",
                  "--json").json()
    assert gpu["providers"][0] == name
    assert [p["label"] for p in gpu["predictions"]] == [p["label"] for p in cpu["predictions"]]
    for a, b in zip(gpu["predictions"], cpu["predictions"]):
        assert abs(a["probability"] - b["probability"]) < 1e-3


@pytest.mark.gpu
def test_gpu_evaluate_and_bench(mlp_exported):
    if not _has_provider("CUDAExecutionProvider"):
        pytest.skip("CUDAExecutionProvider is not available")
    version = mlp_exported.resolve("mlp-digits")
    from dlkit.infer.bench import bench
    from dlkit.infer.evaluate import evaluate

    cuda = evaluate(version, runtime="onnx", provider="cuda")
    assert cuda["providers"][0] == "CUDAExecutionProvider"
    cpu = evaluate(version, runtime="onnx", provider="cpu")
    assert abs(cuda["accuracy"] - cpu["accuracy"]) <= 1 / cpu["samples"]  # a near-tie may flip on GPU kernels
    report = bench(version, [1, 64], ["onnx"], 0.5, "cuda", strict=True)
    assert report["providers"][0] == "CUDAExecutionProvider" and len(report["results"]) == 2
