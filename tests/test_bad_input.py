"""Each bad input of `dlkit train` exits 2 with one line naming the problem, no traceback, and
leaves the repository exactly as it was (no version, no staging folder, not even the folder)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlkit.testing import run_cli


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones included) with its content's digest."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def write_csv(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def good_rows(n: int = 30) -> list[str]:
    return [f"{i % 3 + 0.5 * (i % 5)},{(i * 7) % 11},{'abc'[i % 3]}" for i in range(n)]


def one_class_folder(root: Path) -> str:
    from PIL import Image

    (root / "only").mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), color=i * 40).save(root / "only" / f"{i}.png")
    return str(root)


def nan_npz(path: Path) -> str:
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    x[7, 2] = np.nan
    np.savez(path, x=x, y=np.arange(40) % 2)
    return str(path)


# (id, args built from tmp_path, fragments the one error line must contain)
CASES = [
    ("unknown-arch", lambda t: ["mlpp"], ["unknown model 'mlpp'", "did you mean 'mlp'"]),
    ("missing-data-file", lambda t: ["mlp", "--data", str(t / "absent.csv")], ["absent.csv", "no such file"]),
    ("missing-recipe", lambda t: [str(t / "absent.toml")], ["absent.toml", "not found"]),
    ("bad-recipe-toml", lambda t: [write_csv(t / "r.toml", ["arch = "])], ["r.toml", "invalid TOML"]),
    ("csv-non-numeric", lambda t: ["mlp", "--data", write_csv(t / "cells.csv", ["f1,f2,label", "1,2,a", "3,oops,b"])],
     ["cells.csv:3:", "column 2", "'f2'", "'oops'"]),
    ("csv-unknown-target", lambda t: ["mlp", "--data", write_csv(t / "t.csv", ["f1,f2,label", *good_rows()]),
                                      "--set", "data.target=species"], ["t.csv", "data.target='species'", "label"]),
    ("csv-nan", lambda t: ["mlp", "--data", write_csv(t / "n.csv", ["f1,f2,label", *good_rows(), "1,nan,a"])],
     ["n.csv:32:", "column 2", "nan"]),
    ("npz-nan", lambda t: ["mlp", "--data", nan_npz(t / "n.npz")], ["n.npz", "NaN"]),
    ("one-class-folder", lambda t: ["cnn", "--data", one_class_folder(t / "imgs")], ["imgs", "at least 2 classes"]),
    ("epochs-0", lambda t: ["mlp", "--epochs", "0"], ["--epochs", "at least 1", "0"]),
    ("set-unknown-key", lambda t: ["mlp", "--set", "hiden=[8]"], ["--set hiden", "unknown key", "hidden"]),
    ("set-unknown-model-key", lambda t: ["mlp", "--set", "model.chanels=[8]"], ["model.chanels"]),
    ("set-no-value", lambda t: ["mlp", "--set", "hidden"], ["--set 'hidden'", "KEY=VALUE"]),
    ("set-wrong-type", lambda t: ["mlp", "--set", "hidden=abc"], ["model.hidden", "list", "'abc'"]),
    ("set-unknown-data-key", lambda t: ["mlp", "--set", "data.traget=1"], ["data.traget"]),
    ("set-bad-train-value", lambda t: ["mlp", "--set", "lr=-1"], ["train.lr", "> 0"]),
    ("cnn-on-csv", lambda t: ["cnn", "--data", write_csv(t / "tab.csv", ["f1,f2,label", *good_rows()])],
     ["'cnn'", "tabular", "tab.csv", "image"]),
    ("rnn-on-csv", lambda t: ["rnn", "--data", write_csv(t / "tab.csv", ["f1,f2,label", *good_rows()])],
     ["'rnn'", "tabular"]),
    ("bad-name", lambda t: ["mlp", "--name", "no/slashes"], ["invalid model name", "no/slashes"]),
]


@pytest.mark.parametrize("make_args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(make_args, fragments, tmp_path):
    root = tmp_path / "models"
    result = run_cli("train", *make_args(tmp_path), "--repo", root, "--json", expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert snapshot(root) == {}, "bad input left something in the repository"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_bad_input(tmp_path):
    result = run_cli("train", "mlp", "--device", "cuda", "--repo", tmp_path / "models", expect=2)
    assert "CUDA is not available" in result.stderr and snapshot(tmp_path / "models") == {}


def test_bad_input_leaves_an_existing_repository_unchanged(tmp_path):
    root = tmp_path / "models"
    run_cli("train", "mlp", "--data", "blobs", "--name", "m", "--epochs", "1", "--set", "hidden=[8]",
            "--repo", root)
    before = snapshot(root)
    csv = write_csv(tmp_path / "cells.csv", ["f1,f2,label", "1,2,a", "3,x,b"])
    for args in (["mlp", "--name", "m", "--epochs", "0"],
                 ["mlp", "--name", "m", "--data", "blobs", "--set", "lr=-1"],  # the trainer refuses it, after staging
                 ["mlp", "--name", "m", "--data", csv],
                 ["cnn", "--name", "m", "--set", "channels=[]"]):
        run_cli("train", *args, "--repo", root, expect=2)
    assert snapshot(root) == before


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The same contract outside click's test runner: a real `dlkit` process, its real stderr."""
    csv = write_csv(tmp_path / "cells.csv", ["f1,f2,label", "1,2,a", "3,oops,b"])
    env = {**os.environ, "DLKIT_REPO": str(tmp_path / "models")}
    dlkit = [sys.executable, "-m", "dlkit"]
    for args in (["train", "mlpp"], ["train", "mlp", "--data", csv, "--json"]):
        proc = subprocess.run([*dlkit, *args], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists()
