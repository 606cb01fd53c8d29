"""Compute threads: --threads, $DLKIT_THREADS, and a default that fits the CPUs the process may use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dlkit.testing import run_cli

PROBE = """
import json
from dlkit.training.threads import use_threads
n = use_threads()
import torch
print(json.dumps({"threads": n, "torch": torch.get_num_threads()}))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DLKIT_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, **extra}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_threads_follow_the_cpu_affinity_not_the_machine():
    # A process pinned to one CPU (taskset, a cpuset) must not start one torch thread per core.
    one_cpu = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", PROBE], env=_env(), capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}), check=True)
    assert json.loads(out.stdout) == {"threads": 1, "torch": 1}
    env = subprocess.run([sys.executable, "-c", PROBE], env=_env(DLKIT_THREADS="1"), capture_output=True,
                         text=True, timeout=300, check=True)
    assert json.loads(env.stdout) == {"threads": 1, "torch": 1}


def test_bad_dlkit_threads_is_one_line(mlp_exported_repo, monkeypatch):
    monkeypatch.setenv("DLKIT_REPO", str(mlp_exported_repo))
    monkeypatch.setenv("DLKIT_THREADS", "many")
    err = run_cli("bench", "mlp-digits", "--runtimes", "onnx", "--seconds", "0.1", expect=2).stderr
    assert err.strip() == "error: $DLKIT_THREADS must be a whole number of at least 1, got 'many'"


def test_train_evaluate_bench_take_threads(repo, mlp_exported_repo, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        out = run_cli("train", "mlp", "--epochs", "1", "--set", "model.hidden=[8]", "--threads", "1", "--json").json()
        assert repo.resolve(out["model"]).meta["threads"] == 1
        assert torch.get_num_threads() == 1
        ev = run_cli("evaluate", out["model"], "--threads", "2", "--json").json()
        assert ev["threads"] == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("DLKIT_REPO", str(mlp_exported_repo))
        monkeypatch.setenv("DLKIT_THREADS", "1")
        b = run_cli("bench", "mlp-digits", "--batch-sizes", "1", "--seconds", "0.1", "--json").json()
        assert b["thread_counts"] == {"torch": 1, "onnx": 1} and b["threads"] == 1 and len(b["speedups"]) == 1
        human = run_cli("bench", "mlp-digits", "--batch-sizes", "1", "--seconds", "0.1").stdout
        assert "threads: torch 1, onnx 1" in " ".join(human.split())
    finally:
        torch.set_num_threads(before)


def test_no_speedup_between_runtimes_on_different_thread_counts(mlp_exported_repo):
    from dlkit.infer.bench import bench, compare
    from dlkit.store.repository import ModelRepository

    version = ModelRepository(mlp_exported_repo).resolve("mlp-digits")
    report = bench(version, [1], ["torch", "onnx"], seconds=0.1, provider="cpu", threads=1)
    assert len(report["speedups"]) == 1 and report["speedup_note"] is None
    speedups, note = compare(report["results"], {"torch": 2, "onnx": 1})
    assert speedups == [] and "torch ran on 2 threads and onnxruntime on 1" in note
