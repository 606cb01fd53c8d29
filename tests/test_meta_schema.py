"""meta.json as a schema: every version written records schema_version 1, every reader validates,
and a damaged field is one line naming the file and the field (exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dlkit.errors import InputError
from dlkit.store.derive import derive
from dlkit.store.schema import FIELDS, SCHEMA_VERSION, check_meta
from dlkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _publish(repo, name="hand", **meta):
    with derive(repo, None, "import", name, inherit=()) as new:
        new.meta.update(meta)
    return new.version


def test_published_meta_records_schema_version(repo):
    version = _publish(repo, task="unknown")
    on_disk = json.loads((version.path / "meta.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION == 1
    assert on_disk["name"] == "hand" and on_disk["version"] == 1


def test_missing_schema_version_reads_as_1(repo):
    version = _publish(repo)
    path = version.path / "meta.json"
    doc = json.loads(path.read_text())
    del doc["schema_version"]
    path.write_text(json.dumps(doc))
    assert repo.resolve("hand").meta["schema_version"] == 1


@pytest.mark.parametrize("field, value, message", [
    ("labels", "a,b", r"field 'labels': expected array or null, got string"),
    ("labels", [["x"]], r"field 'labels': expected strings, got array"),
    ("num_classes", "3", r"field 'num_classes': expected integer, got string"),
    ("schema_version", 2, r"field 'schema_version' is 2; this dlkit reads version 1"),
    ("input_spec", {"kind": "tabular", "shape": [0]}, r"field 'input_spec.shape': expected positive integers"),
    ("onnx", {"inputs": [{"name": "x", "shape": [1]}]}, r"field 'onnx.inputs\[0\].dtype' is required"),
    ("source", {"kind": "pickle"}, r"field 'source.kind': expected one of onnx, torch"),
    ("source", {"kind": "torch", "factory": "m:f"}, r"field 'source.example_input': expected object"),
    ("task", 7, r"field 'task': expected string or null, got integer"),
])
def test_bad_field_is_one_line_naming_file_and_field(repo, field, value, message):
    version = _publish(repo)
    path = version.path / "meta.json"
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    result = run_cli("show", "hand", "--repo", repo.root, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0] and re.search(message, lines[0]), lines[0]


def test_labels_must_match_num_classes():
    with pytest.raises(InputError, match=r"m.json: field 'labels' has 2 names but 'num_classes' is 3"):
        check_meta({"labels": ["a", "b"], "num_classes": 3}, "m.json")


def test_not_an_object():
    with pytest.raises(InputError, match=r"m.json: expected a JSON object, got array"):
        check_meta([1], "m.json")


def test_a_bad_meta_is_never_published(repo):
    with pytest.raises(InputError, match="field 'labels'"):
        _publish(repo, labels=3)
    assert repo.names() == [] and not (repo.root / "hand").exists()


def test_null_means_unknown_except_where_readers_need_a_default():
    assert check_meta({"params": None, "arch": None, "metrics": None, "task": None}, "m.json")["params"] is None
    for field in ("onnx", "source", "schema_version"):
        with pytest.raises(InputError, match=f"field '{field}': expected"):
            check_meta({field: None}, "m.json")


def test_unknown_fields_are_kept():
    assert check_meta({"my_plugin": {"x": 1}}, "m.json")["my_plugin"] == {"x": 1}


def test_docs_document_every_field():
    """docs/repository.md has a table row for every field the validator knows."""
    text = (ROOT / "docs" / "repository.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    missing = sorted(set(FIELDS) - rows)
    assert not missing, f"docs/repository.md does not document: {missing}"
