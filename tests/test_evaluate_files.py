"""`dlkit evaluate --data FILE`: every row of the file by default (--split all), a file holding only
some of the model's classes scored on those, and a class the model does not know refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from dlkit.testing import run_cli


def write_csv(path, rows):
    path.write_text("label,a,b,c\n" + "".join(f"{label},{a:.4f},{b:.4f},{c:.4f}\n" for label, (a, b, c) in rows))


def blobs(labels, n, seed):
    rng = np.random.default_rng(seed)
    centre = {"ant": 0.0, "bee": 6.0, "cat": 12.0, "dog": 18.0}
    return [(labels[i % len(labels)], rng.normal(size=3) + centre[labels[i % len(labels)]]) for i in range(n)]


@pytest.fixture
def model(repo, tmp_path):
    write_csv(tmp_path / "train.csv", blobs(["ant", "bee", "cat"], 150, 0))
    run_cli("train", "mlp", "--data", tmp_path / "train.csv", "--name", "blobs", "--set", "hidden=[16]",
            "--epochs", "30", "--batch-size", "16", "--lr", "0.01", "--threads", "1")
    return tmp_path


def test_split_all_scores_every_row_of_the_file(model):
    write_csv(model / "new.csv", blobs(["ant", "bee", "cat"], 60, 1))
    report = run_cli("evaluate", "blobs", "--data", model / "new.csv", "--json").json()
    assert report["split"] == "all" and report["samples"] == 60 and report["accuracy"] > 0.9
    test_only = run_cli("evaluate", "blobs", "--data", model / "new.csv", "--split", "test", "--json").json()
    assert test_only["samples"] == 12
    # the model's own data keeps scoring its test split by default; all its rows on request
    assert run_cli("evaluate", "blobs", "--json").json()["samples"] == 30
    assert run_cli("evaluate", "blobs", "--split", "all", "--json").json()["samples"] == 150


def test_a_file_with_some_of_the_classes_is_scored_on_those(model):
    write_csv(model / "two.csv", blobs(["cat", "ant"], 40, 2))
    report = run_cli("evaluate", "blobs", "--data", model / "two.csv", "--json").json()
    assert report["samples"] == 40 and report["accuracy"] > 0.9 and report["classes"] == "2 of 3"
    assert "2 of 3 classes" in run_cli("evaluate", "blobs", "--data", model / "two.csv").stdout


def test_a_label_the_model_does_not_know_is_one_line(model):
    write_csv(model / "dog.csv", blobs(["ant", "dog"], 40, 3))
    result = run_cli("evaluate", "blobs", "--data", model / "dog.csv", expect=2)
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "'dog'" in result.stderr and "ant, bee, cat" in result.stderr and "dog.csv" in result.stderr
