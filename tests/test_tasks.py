"""Tasks are registrations: every registered task trained on targets passes the same conformance
checks (train, export parity, evaluate through both runtimes, predict, the compressors' quality
check), regression works end to end on real data, and nothing outside a task branches on its name."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlkit import get_registry
from dlkit.testing import check_task, install_throwaway, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_task_conforms(dlkit_task, dlkit_repo):
    """Parametrized over the registry (dlkit.testing): a third-party task is checked the moment it registers."""
    check_task(dlkit_task, dlkit_repo)


def test_builtin_tasks_are_registered():
    registry = get_registry()
    assert {"classification", "regression", "generation"} <= set(registry.names("task"))
    assert registry.task("generation").plugin == "gan"
    assert set(registry.model("mlp").tasks) >= {"classification", "regression"}


def test_hook_register_tasks(tmp_path):
    """A plugin registers a task of its own; an architecture lists it; dlkit trains it with the
    supervised trainer and the task's own loss and metrics, without any core change."""
    source = '''
import numpy as np
from dlkit import hookimpl

def metrics(outputs, targets):
    err = np.abs(np.asarray(outputs).reshape(len(targets), -1) - np.asarray(targets).reshape(len(targets), -1))
    return {"loss": float(err.mean()), "mae": float(err.mean())}

def loss(out, y, config, data=None):
    return (out.reshape(y.shape) - y).abs().mean()

def export(module, meta):
    from dlkit import OnnxGraph
    import torch
    return OnnxGraph(module, {"input": torch.zeros(2, *meta["input_spec"]["shape"])}, ["median"])

def describe(outputs, names, meta, top_k):
    return [{"input": n, "median": float(v[0])} for n, v in zip(names, outputs["median"])]

@hookimpl
def register_tasks(register):
    register("median-regression", metrics, output="median", loss=loss, score="mae", export=export,
             describe=describe, target_dtype="float32", description="L1 loss")

def build(hparams, input_spec, outputs):
    from torch import nn
    return nn.Sequential(nn.Linear(input_spec["shape"][0], 32), nn.ReLU(), nn.Linear(32, outputs))

@hookimpl
def register_models(register):
    register("mlp-l1", build, input_kinds={"tabular"}, task=["median-regression"])
'''
    site = install_throwaway(tmp_path / "site", "dlkit_median", source)
    env = {**os.environ, "PYTHONPATH": str(site), "DLKIT_REPO": str(tmp_path / "m")}
    env.pop("DLKIT_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "dlkit", "train", "mlp-l1", "--data", "diabetes", "--epochs", "2",
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    assert metrics["test_mae"] > 0 and "test_accuracy" not in metrics
    meta = json.loads((tmp_path / "m" / "mlp-l1-diabetes" / "1" / "meta.json").read_text())
    assert meta["task"] == "median-regression"


def test_regression_end_to_end(dlkit_repo, tmp_path):
    """A CSV-free regression on scikit-learn's bundled diabetes data, through the CLI."""
    out = run_cli("train", "mlp", "--data", "diabetes", "--epochs", "40", "--set", "lr=0.003", "--json").json()
    m = out["metrics"]
    assert m["test_r2"] > 0.3 and m["test_rmse"] > 0, m  # Ridge reaches about 0.45-0.5 on this split
    ref = f"{out['model']}:{out['version']}"
    run_cli("export", "onnx", ref, "--json")
    ev = run_cli("evaluate", ref, "--runtime", "onnx", "--json").json()
    assert ev["task"] == "regression" and ev["rmse"] == pytest.approx(m["test_rmse"], rel=1e-4)
    from dlkit.data.load import load_dataset

    ds = load_dataset("diabetes", {}, 0)
    np.save(tmp_path / "rows.npy", ds.x_test[:4])
    shown = run_cli("predict", ref, str(tmp_path / "rows.npy"), "--json").json()["predictions"]
    assert len(shown) == 4 and all(isinstance(p["progression"], float) for p in shown)


def test_a_task_the_architecture_lacks_is_refused(dlkit_repo):
    result = run_cli("train", "cnn", "--set", "task=generation", expect=2)
    assert "does not do generation" in result.stderr and "classification" in result.stderr
    assert not dlkit_repo.root.exists() or not any(dlkit_repo.root.iterdir())


def test_labels_for_regression_are_refused(dlkit_repo):
    result = run_cli("train", "mlp", "--data", "blobs", "--set", "task=regression", expect=2)
    assert "class labels, not numeric targets" in result.stderr


def test_no_module_outside_a_task_branches_on_a_task_name():
    """Core modules ask the registry for the task: no comparison with a built-in task's name."""
    names = {"classification", "regression", "generation"}
    offenders = []
    for path in sorted((ROOT / "dlkit").rglob("*.py")):
        if "tasks" in path.parts or path.name == "core_plugin.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in names:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
