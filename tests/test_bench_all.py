"""`make bench` runs every benchmark: benchmarks/run_all.py has a small preset for each
bench_*.py, refuses to run while one lacks a preset, and reports each one's exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"


def run_all(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(RUN_ALL), *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_every_benchmark_has_a_preset_and_make_bench_calls_run_all():
    listed = run_all("--list")
    assert listed.returncode == 0, listed.stderr
    benches = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    shown = sorted(line.split()[3] for line in listed.stdout.splitlines() if line.startswith("== "))
    assert shown == [f"{b}.py" for b in benches]
    assert "benchmarks/run_all.py" in (ROOT / "Makefile").read_text()


def test_a_benchmark_without_a_preset_is_refused(tmp_path):
    (tmp_path / "run_all.py").write_text(RUN_ALL.read_text())
    (tmp_path / "bench_new.py").write_text("print('hi')\n")
    proc = subprocess.run([sys.executable, str(tmp_path / "run_all.py"), "--list"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no preset for new" in proc.stderr


def test_run_all_runs_a_benchmark_and_reports_its_exit_code():
    proc = run_all("--only", "startup")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| startup | 0 |" in proc.stdout and "dlkit --help" in proc.stdout
