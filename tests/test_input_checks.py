"""predict says what a model expects and warns on inputs unlike its training data; --invert,
data.invert; the README's input files come from examples/make_inputs.py and score right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs")
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_inputs.py"), "--out", str(out)],
                   check=True, timeout=300, capture_output=True)
    return out


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory) -> Path:
    """An MLP trained well enough on digits to read a clean 7, exported."""
    from dlkit.export.onnx import export_onnx
    from dlkit.store.recipe import Recipe
    from dlkit.store.repository import ModelRepository
    from dlkit.training.run import train

    repo = ModelRepository(tmp_path_factory.mktemp("digits") / "models")
    result = train(Recipe(arch="mlp", name="mlp-digits", model={"hidden": [64]},
                          train={"epochs": 20, "batch_size": 64}), repo, quiet=True)
    export_onnx(result.version, exporter="torchscript")
    return repo.root


def test_predict_warns_on_an_inverted_drawing_and_invert_reads_it(digits_repo, inputs, monkeypatch):
    monkeypatch.setenv("DLKIT_REPO", str(digits_repo))
    meta = json.loads((digits_repo / "mlp-digits" / "1" / "meta.json").read_text())
    assert meta["input_spec"]["stats"]["sample_mean"][0] < 0.5  # light strokes on dark
    plain = run_cli("predict", "mlp-digits", str(inputs / "seven.png"), "--json")
    out = plain.json()
    assert out["predictions"][0]["label"] == "7" and out["predictions"][0]["warning"] is None
    assert "light strokes on a dark background" in out["expects"] and "image 1x8x8" in out["expects"]
    assert "warning" not in plain.stderr
    paper = run_cli("predict", "mlp-digits", str(inputs / "seven-on-paper.png"))
    assert "warning: " in paper.stderr and "try --invert" in paper.stderr
    assert "expects: image 1x8x8, values 0..1" in paper.stdout
    fixed = run_cli("predict", "mlp-digits", str(inputs / "seven-on-paper.png"), "--invert", "--json")
    assert fixed.json()["predictions"][0]["label"] == "7" and "warning" not in fixed.stderr


def test_data_invert_trains_on_drawings_and_predict_reads_them_alike(repo, tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for cls in (0, 1):  # a folder of dark-on-white drawings of 0 and 1
        (tmp_path / "paper" / str(cls)).mkdir(parents=True)
        for i in np.flatnonzero(digits.target == cls)[:40]:
            Image.fromarray((255 - digits.images[i] * 255 / 16).astype(np.uint8)).save(
                tmp_path / "paper" / str(cls) / f"{i}.png")
    out = run_cli("train", "mlp", "--data", str(tmp_path / "paper"), "--set", "data.invert=true", "--epochs", "10",
                  "--json").json()
    version = repo.resolve(out["model"])
    assert version.meta["input_spec"]["invert"] is True
    assert version.meta["input_spec"]["stats"]["sample_mean"][0] < 0.5  # learnt as light on dark
    run_cli("export", "onnx", out["model"])
    sample = str(tmp_path / "paper" / "1" / sorted(p.name for p in (tmp_path / "paper" / "1").iterdir())[0])
    pred = run_cli("predict", out["model"], sample, "--json")
    assert pred.json()["predictions"][0]["warning"] is None  # the drawing is read as trained
    bad = run_cli("train", "mlp", "--data", str(tmp_path / "paper"), "--set", "data.invert=yes", expect=2)
    assert "data.invert must be true or false, got 'yes'" in bad.stderr


def test_readme_iris_csv_trains_and_a_wild_row_is_flagged(repo, inputs, tmp_path):
    out = run_cli("train", "mlp", "--data", str(inputs / "iris.csv"), "--epochs", "5", "--set", "model.hidden=[16]")
    assert "target: species, 3 classes, 150 rows, 4 features" in out.stdout
    run_cli("export", "onnx", "mlp-iris")
    rows = tmp_path / "rows.csv"
    rows.write_text("sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n5.1,3.5,1400,0.2\n")
    pred = run_cli("predict", "mlp-iris", str(rows), "--json").json()["predictions"]
    assert pred[0]["warning"] is None
    assert pred[1]["warning"].startswith("petal_length = 1400 is far outside the training data")
