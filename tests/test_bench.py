"""``dlkit bench``: torch and onnxruntime timed side by side in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dlkit.testing import run_cli


def test_bench_reports_both_runtimes(mlp_exported_repo):
    import torch

    from dlkit.infer.bench import bench
    from dlkit.store.repository import ModelRepository

    threads_before = torch.get_num_threads()
    version = ModelRepository(mlp_exported_repo).resolve("mlp-digits")
    report = bench(version, [1, 5], ["torch", "onnx"], seconds=0.2, provider="cpu", threads=1)
    assert torch.get_num_threads() == threads_before  # restored
    assert report["threads"] == 1 and report["providers"] == ["CPUExecutionProvider"]
    assert [(r["batch_size"], r["runtime"]) for r in report["results"]] == [
        (1, "torch"), (1, "onnx"), (5, "torch"), (5, "onnx")]
    for r in report["results"]:
        assert r["calls"] >= 5 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput"] == pytest.approx(r["batch_size"] * 1000 / r["mean_ms"])
    for s in report["speedups"]:
        by = {r["runtime"]: r for r in report["results"] if r["batch_size"] == s["batch_size"]}
        assert s["speedup"] == pytest.approx(by["torch"]["p50_ms"] / by["onnx"]["p50_ms"])
    assert [s["batch_size"] for s in report["speedups"]] == [1, 5]


def test_bench_cli(mlp_exported_repo, monkeypatch):
    monkeypatch.setenv("DLKIT_REPO", str(mlp_exported_repo))
    out = run_cli("bench", "mlp-digits", "--batch-sizes", "2", "--seconds", "0.1", "--json").json()
    assert {r["runtime"] for r in out["results"]} == {"torch", "onnx"} and len(out["speedups"]) == 1
    human = run_cli("bench", "mlp-digits", "--batch-sizes", "2", "--runtimes", "onnx", "--seconds", "0.1")
    assert "p50 ms" in human.stdout and "onnx" in human.stdout
    for args, message in [
        (["--runtimes", "tensorflow"], "unknown runtime 'tensorflow'"),
        (["--batch-sizes", "0,8"], "expected positive integers"),
        (["--seconds", "0"], "--seconds"),
        (["--threads", "0"], "--threads"),
    ]:
        assert message in run_cli("bench", "mlp-digits", *args, expect=2).stderr
    no_onnx = run_cli("bench", "cnn-digits", "--runtimes", "onnx", expect=2)
    assert "run `dlkit export onnx cnn-digits:1` first" in no_onnx.stderr


def test_onnx_only_bench_needs_no_torch(mlp_exported_repo):
    code = """
import json, sys
from dlkit.cli.group import main
try:
    main(["bench", "mlp-digits", "--runtimes", "onnx", "--batch-sizes", "1", "--seconds", "0.1", "--json"])
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sklearn"))), file=sys.stderr)
"""
    env = {**os.environ, "DLKIT_REPO": str(mlp_exported_repo)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert json.loads(proc.stdout)["results"][0]["runtime"] == "onnx"
