"""The command line contract: train (by name and by recipe), models, show, evaluate, --json,
exit codes and --debug, through click's runner and in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlkit.plugins import get_registry
from dlkit.store.recipe import check_options, read_recipe
from dlkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
DLKIT = Path(sys.executable).parent / "dlkit"  # the installed console script
METRICS = {"test_accuracy", "val_accuracy", "test_loss", "train_seconds"}


def dlkit_process(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DLKIT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_train_json_contract(repo):
    first = run_cli("train", "mlp", "--epochs", "1", "--set", "hidden=[16]", "--json")
    assert len(first.stdout.strip().splitlines()) == 1  # exactly one JSON object on stdout
    out = first.json()
    assert set(out) == {"model", "version", "path", "params", "metrics"}
    assert (out["model"], out["version"], Path(out["path"])) == ("mlp-digits", 1, repo.root / "mlp-digits" / "1")
    assert set(out["metrics"]) >= METRICS and all(isinstance(out["metrics"][k], float) for k in METRICS)
    assert 0.0 <= out["metrics"]["test_accuracy"] <= 1.0
    meta = repo.resolve("mlp-digits").meta
    assert out["params"] == meta["params"] == (64 * 16 + 16) + 2 * 16 + (16 * 10 + 10)  # linear, batch norm, linear
    assert meta["metrics"]["test_accuracy"] == out["metrics"]["test_accuracy"]
    assert "epoch   1/1" in first.stderr  # progress goes to stderr

    second = run_cli("train", "mlp", "--epochs", "1", "--set", "hidden=[16]")  # for people
    assert second.stdout.startswith("trained mlp-digits:2 (") and "test_accuracy" in second.stdout
    assert repo.versions("mlp-digits") == [1, 2]


def test_models_show_and_evaluate(trained):
    listed = run_cli("models", "--json").json()
    assert listed["repository"] == str(trained.root)
    assert {m["name"] for m in listed["models"]} == {"mlp-digits", "cnn-digits", "rnn-digits", "gru-digits"}
    assert all(0 <= m["metrics"]["test_accuracy"] <= 1 and m["version"] == 1 for m in listed["models"])
    table = run_cli("models").stdout
    assert all(name in table for name in ("mlp-digits", "cnn-digits", "rnn-digits", "gru-digits"))

    shown = run_cli("show", "cnn-digits", "--json").json()
    assert (shown["arch"], shown["version"], shown["plugin"]) == ("cnn", 1, "cnn")
    assert {"model.safetensors", "meta.json", "metrics.jsonl", "curves.png"} <= set(shown["files"])
    assert run_cli("show", "cnn-digits:1", "--json").json() == shown
    assert "cnn-digits" in run_cli("show", "cnn-digits").stdout
    missing = run_cli("show", "cnn-digits:2", expect=2)
    assert "model 'cnn-digits' has no version 2 (versions: 1)" in missing.stderr

    result = run_cli("evaluate", "gru-digits", "--json").json()
    meta = trained.resolve("gru-digits").meta
    assert result["samples"] == meta["data"]["sizes"]["test"] and result["split"] == "test"
    # Evaluation batches differ from training's: allow one near-tie sample to flip.
    assert abs(result["accuracy"] - meta["metrics"]["test_accuracy"]) <= 1 / result["samples"] + 1e-9, result
    assert "accuracy" in run_cli("evaluate", "mlp-digits", "--split", "val").stdout


def test_empty_repository(repo):
    assert run_cli("models", "--json").json()["models"] == []
    assert "no models in" in run_cli("models").stdout
    assert "no model 'cnn-digits'" in run_cli("show", "cnn-digits", expect=2).stderr
    assert "no model 'cnn-digits'" in run_cli("evaluate", "cnn-digits", expect=2).stderr


def test_recipe_with_flag_overrides(repo, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('arch = "mlp"\nname = "from-recipe"\nseed = 1\n[data]\nsource = "blobs"\n'
                    '[model]\nhidden = [32, 32]\ndropout = 0.3\n[train]\nepochs = 5\nbatch_size = 32\nlr = 0.01\n')
    out = run_cli("train", path, "--epochs", "1", "--set", "hidden=[8]", "--name", "custom", "--seed", "5",
                  "--lr", "0.005", "--set", "train.weight_decay=0", "--json").json()
    assert (out["model"], out["version"]) == ("custom", 1)
    meta = repo.resolve("custom").meta
    assert meta["hparams"]["hidden"] == [8] and meta["hparams"]["dropout"] == 0.3  # flag over file, file kept
    assert (meta["train"]["epochs"], meta["train"]["lr"], meta["train"]["batch_size"]) == (1, 0.005, 32)
    assert meta["train"]["weight_decay"] == 0.0 and meta["seed"] == 5
    assert meta["data"]["source"] == "blobs" and meta["recipe"]["name"] == "custom"
    assert repo.names() == ["custom"]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "models").glob("*.toml")))
def test_shipped_recipes_are_valid(recipe):
    r = read_recipe(ROOT / "models" / recipe)
    spec = get_registry().model(r.arch)
    check_options("model", r.model, spec.defaults)  # a misspelt key or a wrong type fails here
    check_options("train", r.train, get_registry().trainer(spec.trainer).defaults)
    assert r.name == f"{r.arch}-digits" and r.data == {"source": "digits"}


def test_real_process_train_json(tmp_path):
    proc = dlkit_process("train", "mlp", "--data", "blobs", "--epochs", "1", "--set", "hidden=[8]", "--json",
                         DLKIT_REPO=str(tmp_path / "models"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert (out["model"], out["version"]) == ("mlp-blobs", 1) and set(out["metrics"]) >= METRICS
    assert Path(out["path"], "model.safetensors").is_file()
    assert "epoch   1/1" in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    env = {"DLKIT_REPO": str(tmp_path / "models")}
    plain = dlkit_process("train", "mlpp", **env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == "error: unknown model 'mlpp' (did you mean 'mlp'?); " \
        f"registered: {', '.join(get_registry().names('model'))}"
    for args, extra in ((["--debug", "train", "mlpp"], {}), (["train", "mlpp", "--debug"], {}),
                        (["train", "mlpp"], {"DLKIT_DEBUG": "1"})):
        debug = dlkit_process(*args, **env, **extra)
        assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr, args
        assert "InputError: unknown model 'mlpp'" in debug.stderr


def test_exit_codes(repo):
    assert run_cli("--version").stdout.strip().endswith("0.1.0")
    assert run_cli("--help").exit_code == 0
    assert "Missing argument" in run_cli("train", expect=2).stderr  # click's usage errors are 2 as well
    assert "No such command" in run_cli("trian", expect=2).stderr
    assert "--epochs" in run_cli("train", "mlp", "--epochs", "many", expect=2).stderr
    # A failure during the work (not the user's input) is exit code 1: here a diverging run.
    failed = run_cli("train", "mlp", "--data", "blobs", "--lr", "1e30", "--set", "hidden=[8]", expect=1)
    assert failed.stderr.strip().splitlines()[-1].startswith("error: loss became nan")


def test_repo_option_overrides_the_environment(repo, tmp_path):
    other = tmp_path / "elsewhere"
    run_cli("train", "mlp", "--data", "blobs", "--epochs", "1", "--set", "hidden=[8]", "--repo", other)
    assert (other / "mlp-blobs" / "1" / "meta.json").is_file() and not repo.root.exists()
    assert run_cli("models", "--json", "--repo", other).json()["models"][0]["name"] == "mlp-blobs"


def test_evaluate_on_another_csv_reads_it_like_the_training_file(repo, tmp_path):
    """--data OTHER.csv keeps the recorded data.target column (here the first, not the last)."""
    import numpy as np

    from dlkit.infer.evaluate import evaluate
    from dlkit.store.recipe import Recipe
    from dlkit.training.run import train

    rng = np.random.default_rng(0)

    def write(path, n):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 3)) + 6 * y[:, None]
        rows = ["label,a,b,c"] + [f"{'yes' if t else 'no'},{a:.4f},{b:.4f},{c:.4f}" for t, (a, b, c) in zip(y, x)]
        path.write_text("\n".join(rows) + "\n")

    write(tmp_path / "train.csv", 120)
    write(tmp_path / "other.csv", 60)
    result = train(Recipe(arch="mlp", name="csvmodel", data={"source": str(tmp_path / "train.csv"), "target": "label"},
                          model={"hidden": [16]}, train={"epochs": 20, "lr": 0.01}), repo, quiet=True)
    report = evaluate(result.version, data=str(tmp_path / "other.csv"))
    assert report["samples"] > 0 and report["accuracy"] > 0.8
