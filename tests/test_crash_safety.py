"""SIGKILL at random points: the repository stays loadable and --resume loses nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from dlkit.infer.session import Session
from dlkit.store.repository import ModelRepository
from dlkit.store.weights import load_tensors

TRAIN = ["train", "mlp", "--name", "crash", "--epochs", "8", "--set", "hidden=[256,256]", "--set", "patience=0"]


def start(args, repo: Path) -> subprocess.Popen:
    env = {**os.environ, "DLKIT_REPO": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dlkit", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def checkpoints(repo: Path) -> list[Path]:
    return list((repo / "crash" / ".staging").glob("*/checkpoint.safetensors"))


def kill_after_checkpoint(proc: subprocess.Popen, repo: Path, rng: random.Random) -> bool:
    """SIGKILL ``proc`` at a random moment once a checkpoint exists; False if it finished first."""
    deadline = time.time() + 120
    while not checkpoints(repo) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.4))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_killed_training_resumes_bit_identical(tmp_path):
    rng = random.Random(os.getpid())
    reference = tmp_path / "reference"
    done = start(TRAIN, reference)
    crashed = tmp_path / "crashed"
    proc = start(TRAIN, crashed)
    kills = 0
    for _ in range(3):
        if not kill_after_checkpoint(proc, crashed, rng):
            break
        kills += 1
        # what a kill leaves never looks like a finished version
        assert ModelRepository(crashed).all_versions() == []
        proc = start([*TRAIN, "--resume"], crashed)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert done.wait(timeout=300) == 0, done.stderr.read()[-2000:]
    assert kills >= 1, "the run finished before any kill: make it longer"
    a = load_tensors(ModelRepository(reference).resolve("crash").weights_path)
    b = load_tensors(ModelRepository(crashed).resolve("crash").weights_path)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), f"{key} differs after {kills} kills and resumes"
    # the resume consumed the staging folder: nothing stray is left
    assert sorted(p.name for p in (crashed / "crash").iterdir()) == ["1"]


def test_killed_export_keeps_previous_model(trained):
    version = trained.resolve("cnn-digits")
    env = {**os.environ, "DLKIT_REPO": str(trained.root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dlkit", "export", "onnx", "cnn-digits", "--exporter", "torchscript"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    before = version.onnx_path.read_bytes()
    rng = random.Random(os.getpid())
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.kill()
        proc.wait()
        after = version.onnx_path.read_bytes()
        assert after == before or Session(version.onnx_path).outputs  # old file, or a complete new one
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    leftovers = [p.name for p in version.path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
