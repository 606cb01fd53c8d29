"""Issue 13, finding 4: whether a staging folder is in use is decided by a held lock, not by
a PID (which means nothing across PID namespaces and may be reused)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlkit.store.repository import LOCK, ModelRepository

# Stages a run, says where, and holds it until its stdin closes (a live run in another process).
HOLDER = textwrap.dedent("""
    import sys
    from dlkit.store.repository import ModelRepository
    staged = ModelRepository(sys.argv[1]).stage("m")
    print(staged.path, flush=True)
    sys.stdin.read()
""")
CLEANER = "import sys; from dlkit.store.repository import ModelRepository; " \
          "print(len(ModelRepository(sys.argv[1]).clean_staging('m')))"


def _start_holder(root: Path, prefix: list[str] = ()) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, "the holder process did not stage a run"
    return proc, Path(line)


def _stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=120)


def test_live_run_is_kept_whatever_its_pid_says(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    proc, path = _start_holder(repo.root)
    try:
        # As another PID namespace sees it: the PID in the name does not exist here.
        foreign = path.with_name("1-999999999")
        os.rename(path, foreign)
        assert repo.clean_staging("m") == []
        assert repo.interrupted("m", LOCK) == []
        assert foreign.is_dir()
    finally:
        _stop(proc)
    # The holder died without publishing: now the folder is stale and cleaned.
    assert [p.name for p in repo.clean_staging("m")] == ["1-999999999"]


def test_alive_pid_without_the_lock_is_stale(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    proc, path = _start_holder(repo.root)
    _stop(proc)  # the folder stays, its lock is free
    reused = path.with_name(f"1-{os.getppid()}")  # a PID that is alive (reused by another process)
    os.rename(path, reused)
    assert [p.name for p in repo.clean_staging("m")] == [reused.name]


def test_published_version_keeps_no_lock_file(repo):
    staged = repo.stage("m")
    version = staged.commit({"arch": "mlp"})
    assert sorted(p.name for p in version.path.iterdir()) == ["meta.json"]


def test_resume_claims_the_folder(repo):
    staged = repo.stage("m")
    (staged.path / "marker").write_text("x")
    staged.release()
    found = repo.interrupted("m", "marker")
    assert [s.path for s in found] == [staged.path]
    found[0].claim()
    other = subprocess.run([sys.executable, "-c", CLEANER, str(repo.root)], capture_output=True, text=True,
                           timeout=120)
    assert other.stdout.strip() == "0", other.stderr
    found[0].release()


def _unshare() -> list[str]:
    tool = shutil.which("unshare")
    if os.geteuid() != 0 or tool is None:
        pytest.skip("unshare --pid needs root")
    prefix = [tool, "--pid", "--fork"]
    if subprocess.run([*prefix, "true"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("unshare --pid is not permitted here")
    return prefix


def test_runs_in_two_pid_namespaces_keep_each_others_folders(tmp_path):
    prefix = _unshare()
    root = tmp_path / "models"
    proc, path = _start_holder(root, prefix)
    try:
        assert path.name.endswith("-1")  # pid 1 in its own namespace
        other = subprocess.run([*prefix, sys.executable, "-c", CLEANER, str(root)], capture_output=True,
                               text=True, timeout=120)  # also pid 1 in another namespace
        assert other.stdout.strip() == "0", other.stderr
        assert path.is_dir()
    finally:
        _stop(proc)
