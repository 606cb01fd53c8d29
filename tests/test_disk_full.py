"""Issue 13, finding 12: a full disk is one clear line, and export publishes model.onnx, its
meta.json record and config.pbtxt together or not at all.

The disk is a real tmpfs of a few pages (mounted as root; skipped elsewhere), filled so that
the write fails at each step of an export: the graph, the record, the Triton config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = 4096


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _leave_free(disk: Path, pages: int) -> None:
    """Fill ``disk`` so that exactly ``pages`` pages stay free."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * (free - pages * PAGE))
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize == pages * PAGE


def _dlkit(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DLKIT_REPO": str(repo)}
    return subprocess.run([sys.executable, "-m", "dlkit", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _published(version: Path) -> dict:
    meta = json.loads((version / "meta.json").read_text())
    return {"model.onnx": (version / "model.onnx").exists(), "record": "onnx" in meta,
            "config.pbtxt": (version.parent / "config.pbtxt").exists(),
            "temporaries": sorted(p.name for p in [*version.iterdir(), *version.parent.iterdir()]
                                  if p.name.endswith(".tmp"))}


def test_export_on_a_full_disk_publishes_nothing(trained_repo, mlp_exported_repo, tiny_disk):
    repo = tiny_disk / "models"
    shutil.copytree(trained_repo / "mlp-digits", repo / "mlp-digits")
    version = repo / "mlp-digits" / "1"
    onnx_pages = -(-(mlp_exported_repo / "mlp-digits" / "1" / "model.onnx").stat().st_size // PAGE)
    nothing = {"model.onnx": False, "record": False, "config.pbtxt": False, "temporaries": []}
    # 0: the graph itself does not fit; onnx_pages: the graph fits, its record does not;
    # onnx_pages + 1: graph and record fit, config.pbtxt does not.
    for pages in (0, onnx_pages, onnx_pages + 1):
        _leave_free(tiny_disk, pages)
        out = _dlkit(repo, "export", "onnx", "mlp-digits", "--exporter", "torchscript")
        assert out.returncode == 1, out.stderr
        assert "No space left on device" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert _published(version) == nothing, pages
    (tiny_disk / "filler").unlink()
    out = _dlkit(repo, "export", "onnx", "mlp-digits", "--exporter", "torchscript")
    assert out.returncode == 0, out.stderr
    assert _published(version) == {"model.onnx": True, "record": True, "config.pbtxt": True, "temporaries": []}
    before = (version / "model.onnx").read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    out = _dlkit(repo, "export", "onnx", "mlp-digits", "--exporter", "torchscript")
    assert out.returncode == 1 and "Read-only file system" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert (version / "model.onnx").read_bytes() == before


def test_train_on_a_full_disk_is_one_line(tiny_disk):
    repo = tiny_disk / "models"
    _leave_free(tiny_disk, 2)  # the staging folder and recipe fit, the weights do not
    out = _dlkit(repo, "train", "mlp", "--epochs", "1", "--set", "hidden=[64]")
    assert out.returncode == 1, out.stderr
    assert "No space left on device" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not any(p.name.isdigit() for p in (repo / "mlp-digits").iterdir()) if (repo / "mlp-digits").exists() else True
