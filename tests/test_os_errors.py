"""OS errors (a repository that cannot be written, no permission) are one line and an exit code,
found before the expensive work (real subprocesses; a real unprivileged user where run as root)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROBE = """
import sys
from dlkit.cli.group import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print("torch imported:", "torch" in sys.modules, file=sys.stderr)
    raise
"""


def run(args, *, user=None, timeout=600):
    env = {**os.environ, "HOME": tempfile.gettempdir()}
    kwargs = {}
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kwargs)


def test_repository_under_a_file_is_refused_before_torch(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = run(["train", "mlp", "--epochs", "1", "--repo", str(tmp_path / "notes.txt" / "models")])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"error: --repo {tmp_path / 'notes.txt' / 'models'}: cannot write there (Not a directory")
    assert "torch imported: False" in out.stderr


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs `unshare -rm` (a private mount namespace)")


def in_namespace(setup: str, args: list[str], after: str = "true", timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``setup`` (mounts), dlkit ARGS, then ``after`` (on stdout) in a private user+mount
    namespace: a real read-only or full file system that nothing outside the test sees."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-c", PROBE, *args])
    script = f"{setup} || exit 99; {command}; rc=$?; {after}; exit $rc"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HOME": tempfile.gettempdir()})


@needs_mount
def test_read_only_repository_is_one_line_for_train_and_export(trained_repo, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    repo = mnt / "models"
    setup = (f"mount -t tmpfs tmpfs {mnt} && cp -r {trained_repo} {repo} && mount -o remount,ro {mnt}")
    train = in_namespace(setup, ["train", "mlp", "--epochs", "1", "--repo", str(repo)])
    assert train.returncode == 2 and "Traceback" not in train.stderr, train.stderr
    assert train.stderr.splitlines()[0] == f"error: --repo {repo}: cannot write there (Read-only file system)"
    assert "torch imported: False" in train.stderr
    export = in_namespace(setup, ["export", "onnx", "mlp-digits", "--repo", str(repo)])
    assert export.returncode == 1 and "Traceback" not in export.stderr, export.stderr
    line = export.stderr.splitlines()[0]
    assert line.startswith("error: Read-only file system: ") and str(repo / "mlp-digits") in line
    assert line.endswith("(the file system is read-only: use --repo on a writable one)")
    debug = in_namespace(setup, ["export", "onnx", "mlp-digits", "--repo", str(repo), "--debug"])
    assert "Traceback" in debug.stderr and "OSError" in debug.stderr


@needs_mount
def test_a_full_disk_during_training_is_one_line_and_leaves_nothing(tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    repo = mnt / "models"
    # Room for the write probe and the recipe, not for the first checkpoint (~60 KB).
    out = in_namespace(f"mount -t tmpfs -o size=24k tmpfs {mnt}",
                       ["train", "mlp", "--epochs", "2", "--set", "model.hidden=[64]", "--repo", str(repo)],
                       after=f"echo left: $(find {mnt} -mindepth 1 | wc -l)")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: No space left on device")
    assert errors[0].endswith("(free some space and run it again)")
    assert "left: 0" in out.stdout  # no half-made version, no staging folder, not even the repository
