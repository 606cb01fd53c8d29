"""`dlkit --help` and the listing commands stay instant: no heavy package is imported to run them,
with every installed plugin loaded (a plugin's module must import nothing heavy at top level)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ["torch", "onnx", "onnxruntime", "onnxscript", "sklearn", "numpy", "scipy", "matplotlib", "PIL",
         "safetensors", "fastapi", "uvicorn", "pandas"]

PROBE = """
import json, sys
from dlkit.cli.group import main
try:
    main({args!r})
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def probe(args: list[str], tmp_path) -> dict:
    env = {**os.environ, "DLKIT_REPO": str(tmp_path / "models")}
    env.pop("DLKIT_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True,
                          text=True, env=env, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["models", "--json"],
                                  ["--version"], ["train", "--help"]], ids=" ".join)
def test_command_imports_nothing_heavy(args, tmp_path):
    result = probe(args, tmp_path)
    assert result == {"code": 0, "heavy": []}, f"`dlkit {' '.join(args)}` imported {result['heavy']}"


def test_help_exits_0_and_lists_the_core_commands():
    proc = subprocess.run([sys.executable, "-m", "dlkit", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    for command in ("train", "evaluate", "models", "show", "plugins"):
        assert f"  {command} " in proc.stdout, command


def test_the_probe_would_see_a_heavy_import(tmp_path):
    """The check above can fail: a command that does load torch is caught."""
    (tmp_path / "bad.csv").write_text("a,label\n1,x\n")
    result = probe(["train", "mlp", "--data", str(tmp_path / "bad.csv")], tmp_path)
    assert result["code"] == 2 and {"numpy", "torch"} & set(result["heavy"])
