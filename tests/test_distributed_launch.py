"""Issue 13, finding 5: `--nproc` never runs files from the current folder, and a single-node
run's rendezvous and process group stay on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dlkit.training import distributed


def test_nproc_ignores_a_stray_dlkit_py_in_the_current_folder(tmp_path):
    (tmp_path / "dlkit.py").write_text('print("STRAY FILE RAN")\nraise SystemExit(0)\n')
    env = {**os.environ, "DLKIT_REPO": str(tmp_path / "models")}
    script = Path(sys.executable).with_name("dlkit")  # the console script users run (not -m: that reads cwd)
    out = subprocess.run([str(script), "train", "mlp", "--epochs", "1", "--set", "hidden=[16]",
                          "--nproc", "2", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert "STRAY FILE RAN" not in out.stdout + out.stderr
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "models" / "mlp-digits" / "1" / "meta.json").is_file()


def test_launch_binds_to_loopback_in_safe_path_mode(monkeypatch):
    seen = {}

    def record(cmd, env):  # the command line and environment torchrun would get
        seen.update(cmd=cmd, env=env)
        return 0

    monkeypatch.setattr(distributed.subprocess, "call", record)
    assert distributed.launch(2, ["train", "mlp"]) == 0
    cmd = seen["cmd"]
    safe = "-P" if sys.version_info >= (3, 11) else "-I"
    assert cmd[:2] == [sys.executable, safe] and "--standalone" not in cmd
    assert any(a.startswith("--rdzv-endpoint=127.0.0.1:") for a in cmd) and "--local-addr=127.0.0.1" in cmd
    assert cmd[cmd.index("--no-python") + 1:][:4] == [sys.executable, safe, "-m", "dlkit"]
    assert seen["env"]["MASTER_ADDR"] == "127.0.0.1"
