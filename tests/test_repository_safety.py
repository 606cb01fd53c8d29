"""Issue 13, findings 2 and 10: names, version refs and links can never make dlkit touch,
delete or show anything outside the repository, and one bad version hides no other."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dlkit.errors import InputError
from dlkit.store.atomic import write_json
from dlkit.store.repository import ModelRepository, check_name, parse_ref
from dlkit.testing import run_cli


def _version(root: Path, name: str, version: int | str, **meta) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    write_json(folder / "meta.json", {"arch": "mlp", "metrics": {"test_accuracy": 0.5}, **meta})
    return folder


def _victim(tmp_path: Path) -> Path:
    """A folder outside the repository holding what an unguarded cleanup would delete."""
    victim = tmp_path / "victim"
    for sub in ("1-999999999", "data"):
        (victim / sub).mkdir(parents=True)
        (victim / sub / "precious.txt").write_text("keep me")
    return victim


def _intact(victim: Path) -> bool:
    return all((victim / sub / "precious.txt").is_file() for sub in ("1-999999999", "data"))


@pytest.mark.parametrize("name", ["x\n", "../../x", "/abs/x", "a/b", "", ".hidden", "x" * 129])
def test_invalid_names_are_refused(name):
    with pytest.raises(InputError, match="invalid model name"):
        check_name(name)


@pytest.mark.parametrize("ref", ["m:²", "m:١", "m:0", "m:01", "m:" + "9" * 5000, "m:-1", "m:1\n"])
def test_version_refs_are_ascii_numbers(ref):
    with pytest.raises(InputError, match="invalid version"):
        parse_ref(ref)


def test_train_name_is_checked_before_any_cleanup(tmp_path, repo):
    victim = _victim(tmp_path / "abs")
    (victim.parent / ".staging").symlink_to(victim)  # what `--name <abs>` would clean
    for name in (str(victim.parent), os.path.relpath(victim.parent, repo.root / "x"), "x\n"):
        for extra in ([], ["--resume"]):
            out = run_cli("train", "mlp", "--name", name, "--epochs", "1", *extra, expect=2)
            assert "invalid model name" in out.stderr and "Traceback" not in out.stderr
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'arch = "mlp"\nname = "{victim.parent}"\n')
    assert "invalid model name" in run_cli("train", str(recipe), expect=2).stderr
    assert _intact(victim)
    assert not repo.root.exists()


def test_symlinked_staging_folder_is_refused_not_followed(tmp_path, repo):
    victim = _victim(tmp_path)
    (repo.root / "m").mkdir(parents=True)
    (repo.root / "m" / ".staging").symlink_to(victim)
    out = run_cli("train", "mlp", "--name", "m", "--epochs", "1", expect=2)
    assert "not a real folder" in out.stderr and "Traceback" not in out.stderr
    assert _intact(victim)
    with pytest.raises(InputError):
        repo.clean_staging("m")
    assert _intact(victim)


def test_model_folder_linked_outside_is_refused(tmp_path, repo):
    victim = _victim(tmp_path)
    (victim / ".staging").mkdir()
    (victim / ".staging" / "1-999999999").mkdir()
    repo.root.mkdir()
    (repo.root / "m").symlink_to(victim)
    with pytest.raises(InputError, match="outside the repository"):
        repo.clean_staging("m")
    with pytest.raises(InputError, match="outside the repository"):
        repo.stage("m")
    assert (victim / ".staging" / "1-999999999").is_dir()


def test_cleanup_deletes_only_run_folders(tmp_path, repo):
    victim = _victim(tmp_path)
    staging = repo.root / "m" / ".staging"
    staging.mkdir(parents=True)
    (staging / "1-999999999").mkdir()  # a dead run: removed
    (staging / "notes").mkdir()  # not named like a run: kept
    (staging / "2-999999998").symlink_to(victim / "data")  # named like a run, but a link: kept
    removed = repo.clean_staging("m")
    assert [p.name for p in removed] == ["1-999999999"]
    assert (staging / "notes").is_dir() and (staging / "2-999999998").is_symlink()
    assert _intact(victim)


@pytest.mark.parametrize("bad", [
    "[" * 100_000 + "]" * 100_000,
    '{"arch": "mlp", "params": ' + "7" * 5000 + "}",
    '{"arch": "mlp", "metrics": 5}',
])
def test_one_bad_version_does_not_hide_the_others(repo, bad):
    _version(repo.root, "good", 1)
    (_version(repo.root, "bad", 1) / "meta.json").write_text(bad)
    _version(repo.root, "bad", 2)
    (repo.root / "good" / "²").mkdir()  # a folder isdigit() takes for a version
    write_json(repo.root / "good" / "²" / "meta.json", {})
    out = run_cli("models", "--json")
    rows = {(m["name"], m["version"]): m for m in json.loads(out.stdout)["models"]}
    assert set(rows) == {("good", 1), ("bad", 1), ("bad", 2)}
    assert rows[("bad", 2)]["arch"] == "mlp" and rows[("good", 1)]["arch"] == "mlp"
    if "metrics" not in bad:
        assert "error" in rows[("bad", 1)]
        err = run_cli("show", "bad:1", expect=2).stderr
        assert "meta.json" in err and "Traceback" not in err
    run_cli("models")  # the table, too
    err = run_cli("show", "good:²", expect=2).stderr
    assert "invalid version" in err and "Traceback" not in err


def test_show_refuses_meta_json_linked_outside(tmp_path, repo):
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    folder = _version(repo.root, "m", 1)
    (folder / "meta.json").unlink()
    (folder / "meta.json").symlink_to(secret)
    out = run_cli("show", "m", "--json", expect=2)
    assert "hunter2" not in out.stdout + out.stderr
    assert "outside the repository" in out.stderr
    assert "hunter2" not in run_cli("models", "--json").stdout


def test_export_refuses_a_version_folder_linked_outside(tmp_path, repo):
    outside = _version(tmp_path / "elsewhere", "m", 2)
    (repo.root / "m").mkdir(parents=True)
    (repo.root / "m" / "2").symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())
    out = run_cli("export", "onnx", "m:2", expect=2)
    assert "outside the repository" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(InputError, match="outside the repository"):
        ModelRepository(repo.root).resolve("m:2").update_meta(onnx={})
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not (tmp_path / "elsewhere" / "m" / "config.pbtxt").exists()
