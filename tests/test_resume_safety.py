"""Ctrl-C and a re-run: an interrupted run is never deleted by a fresh one, and the command that
Ctrl-C prints continues it (real processes, a real SIGINT)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ARGS = ["train", "mlp", "--name", "r", "--epochs", "40", "--set", "model.hidden=[16]", "--set", "train.patience=0"]


def dlkit(*args: str, repo: Path) -> list[str]:
    return [sys.executable, "-m", "dlkit", *args, "--repo", str(repo)]


def interrupt_after_first_checkpoint(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Start ``dlkit train``, send SIGINT once its first checkpoint is on disk, return how it ended."""
    proc = subprocess.Popen(dlkit(*args, repo=repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2400):  # bounded: at most 8 minutes on a loaded machine
            if list(repo.glob("r/.staging/*/checkpoint.safetensors")) or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"training ended before it could be interrupted: {proc.stderr.read()}"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_then_a_fresh_run_keeps_the_checkpoint_and_the_printed_resume_works(tmp_path):
    repo = tmp_path / "models"
    stopped = interrupt_after_first_checkpoint(repo, *ARGS)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "interrupted: the last checkpoint is kept in" in stopped.stderr
    line = next(x for x in stopped.stderr.splitlines() if x.startswith("continue with: "))
    command = shlex.split(line.removeprefix("continue with: "))
    assert command == ["dlkit", *ARGS, "--repo", str(repo), "--resume"]
    (checkpoint,) = repo.glob("r/.staging/*/checkpoint.safetensors")

    fresh = subprocess.run(dlkit(*ARGS, repo=repo), capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 2 and "Traceback" not in fresh.stderr
    assert fresh.stderr.strip() == (f"error: an interrupted run of 'r' is kept in {checkpoint.parent}: continue it "
                                    f"with --resume, or discard it and start over with --restart")
    assert checkpoint.is_file()

    resumed = subprocess.run([sys.executable, "-m", "dlkit", *command[1:]], capture_output=True, text=True,
                             timeout=900)  # right after Ctrl-C: the checkpoint writer finished before exit
    assert resumed.returncode == 0, resumed.stderr
    assert "trained r:1" in resumed.stdout and (repo / "r" / "1" / "model.safetensors").is_file()

    again = interrupt_after_first_checkpoint(repo, *ARGS)
    assert again.returncode == 130
    (kept,) = repo.glob("r/.staging/*")
    restarted = subprocess.run(dlkit(*ARGS[:5], "2", *ARGS[6:], "--restart", repo=repo), capture_output=True,
                               text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr
    assert f"discarded the interrupted run in {kept}" in restarted.stderr and not kept.exists()
    assert (repo / "r" / "2" / "model.safetensors").is_file()
    both = subprocess.run(dlkit(*ARGS, "--resume", "--restart", repo=repo), capture_output=True, text=True,
                          timeout=600)
    assert both.returncode == 2 and "give one" in both.stderr
