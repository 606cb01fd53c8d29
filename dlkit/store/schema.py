"""The meta.json schema: which fields a version records, their types, and one validator.

Every reader of a version goes through :func:`check_meta` (``ModelVersion.meta``), and so
does every writer (``StagedVersion.commit``), so a hand-written or damaged meta.json is refused
with one line naming the file and the field, never a ``KeyError`` deep in a command.
docs/repository.md documents each field of :data:`FIELDS` (a test checks that it does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlkit.errors import InputError

SCHEMA_VERSION = 1  # meta.json written before the field existed is version 1 too


@dataclass(frozen=True)
class Field:
    """One top-level meta.json field: JSON type(s), whether a loader needs it, what it means."""

    types: tuple[str, ...]
    meaning: str
    required: bool = False


# JSON type names: "object", "array", "string", "integer", "number", "boolean", "null".
FIELDS: dict[str, Field] = {
    "schema_version": Field(("integer",), "meta.json schema version (1); missing means 1"),
    "name": Field(("string",), "model name, written by dlkit on publish (the folder name is what counts)"),
    "version": Field(("integer",), "version number, written by dlkit on publish (the folder name is what counts)"),
    "task": Field(("string", "null"), "the registered task: classification, regression, generation...; "
                                       "null: none (an imported graph); missing: classification"),
    "target_spec": Field(("object", "null"), "what a regression model predicts: names, mean, std"),
    "arch": Field(("string",), "registered architecture that rebuilds the torch module (trained models)"),
    "plugin": Field(("string",), "plugin that registered the architecture"),
    "trainer": Field(("string",), "registered trainer that made the weights"),
    "hparams": Field(("object",), "the architecture's hyper-parameters"),
    "train": Field(("object",), "the trainer's options"),
    "seed": Field(("integer",), "random seed of the run"),
    "input_spec": Field(("object",), "what one sample is: kind, shape (batch axis left out), dtype, range..."),
    "labels": Field(("array", "null"), "class names, index i = output i (classifiers)"),
    "num_classes": Field(("integer",), "number of classes (classifiers)"),
    "data": Field(("object",), "the data set: source, options, seed, split sizes"),
    "metrics": Field(("object",), "measured quality (test_accuracy, val_accuracy, test_loss, ...)"),
    "params": Field(("integer",), "number of parameters"),
    "parent": Field(("object", "null"), "the model this one was made from: {name, version}"),
    "method": Field(("string", "null"), "how it was made from its parent (quantize-dynamic, distill, import...)"),
    "lineage": Field(("array",), "the whole chain of ancestors, oldest first"),
    "created": Field(("string",), "when the version was published (ISO 8601, UTC)"),
    "versions": Field(("object",), "library versions it was made with"),
    "onnx": Field(("object",), "the model.onnx record: inputs, outputs, opset, bytes, sha256"),
    "source": Field(("object",), "where an imported model came from: {kind: onnx|torch, ...}"),
    "quantization": Field(("object",), "how a quantized model was made (dlkit quantize)"),
    "measurements": Field(("object",), "the quantizer's measured table"),
    "distill": Field(("object",), "how a distilled model was made (dlkit distill)"),
}
# Fields that may be null ("not known"); the others are left out when unknown, because
# readers use ``meta.get(field, default)`` and a null would not fall back to the default.
NOT_NULLABLE = ("schema_version", "name", "version", "onnx", "source")
TENSOR_FIELDS = {"name": ("string",), "shape": ("array",), "dtype": ("string",)}
SOURCE_KINDS = ("onnx", "torch")

_PYTHON = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value (booleans are not integers here)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return next((k for k, t in _PYTHON.items() if isinstance(value, t)), type(value).__name__)


def _is(value: Any, types: tuple[str, ...]) -> bool:
    got = json_type(value)
    return got in types or (got == "integer" and "number" in types)


def check_meta(meta: Any, path: str | Path) -> dict:
    """Validate a parsed meta.json; returns it with ``schema_version`` filled in.

    Raises :class:`InputError` naming ``path`` and the field at fault. Fields not in
    :data:`FIELDS` are kept unchecked: plugins may record their own.
    """
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {json_type(meta)}")
    meta = {"schema_version": SCHEMA_VERSION, **meta}
    for key, spec in FIELDS.items():
        if key not in meta:
            if spec.required:
                raise InputError(f"{path}: field {key!r} is required ({spec.meaning})")
            continue
        if meta[key] is None and key not in NOT_NULLABLE:
            continue
        if not _is(meta[key], spec.types):
            raise InputError(f"{path}: field {key!r}: expected {' or '.join(spec.types)}, "
                             f"got {json_type(meta[key])} {_show(meta[key])}")
    version = meta["schema_version"]
    if version < 1 or version > SCHEMA_VERSION:
        raise InputError(f"{path}: field 'schema_version' is {version}; this dlkit reads version "
                         f"{SCHEMA_VERSION} (a newer dlkit wrote it?)")
    _check_labels(meta, path)
    _check_input_spec(meta.get("input_spec"), path)
    _check_onnx(meta.get("onnx"), path)
    _check_source(meta.get("source"), path)
    return meta


def _check_labels(meta: dict, path) -> None:
    labels = meta.get("labels")
    if labels is None:
        return
    bad = next((x for x in labels if not _is(x, ("string", "number"))), _NONE)
    if bad is not _NONE:
        raise InputError(f"{path}: field 'labels': expected strings, got {json_type(bad)} {_show(bad)}")
    n = meta.get("num_classes")
    if n is not None and n != len(labels):
        raise InputError(f"{path}: field 'labels' has {len(labels)} names but 'num_classes' is {n}")


def _check_input_spec(spec, path) -> None:
    if spec is None:
        return
    for key, types in {"kind": ("string",), "shape": ("array",), "dtype": ("string",),
                       "range": ("array", "null")}.items():
        if key in spec and not _is(spec[key], types):
            raise InputError(f"{path}: field 'input_spec.{key}': expected {' or '.join(types)}, "
                             f"got {json_type(spec[key])} {_show(spec[key])}")
    shape = spec.get("shape") or []
    if any(not (d is None or (_is(d, ("integer",)) and d > 0)) for d in shape):
        raise InputError(f"{path}: field 'input_spec.shape': expected positive integers, got {_show(shape)}")


def _check_onnx(record, path) -> None:
    if record is None:
        return
    for side in ("inputs", "outputs"):
        tensors = record.get(side)
        if tensors is None:
            continue
        if not isinstance(tensors, list):
            raise InputError(f"{path}: field 'onnx.{side}': expected array, got {json_type(tensors)}")
        for i, t in enumerate(tensors):
            where = f"onnx.{side}[{i}]"
            if not isinstance(t, dict):
                raise InputError(f"{path}: field {where!r}: expected object, got {json_type(t)}")
            for key, types in TENSOR_FIELDS.items():
                if key not in t:
                    raise InputError(f"{path}: field '{where}.{key}' is required")
                if not _is(t[key], types):
                    raise InputError(f"{path}: field '{where}.{key}': expected {types[0]}, got {json_type(t[key])}")
            if any(not (d is None or _is(d, ("integer", "string"))) for d in t["shape"]):
                raise InputError(f"{path}: field '{where}.shape': expected integers, names or null, "
                                 f"got {_show(t['shape'])}")


def _check_source(source, path) -> None:
    if source is None:
        return
    kind = source.get("kind")
    if kind not in SOURCE_KINDS:
        raise InputError(f"{path}: field 'source.kind': expected one of {', '.join(SOURCE_KINDS)}, got {_show(kind)}")
    if kind == "torch":
        for key, types in {"factory": ("string",), "example_input": ("object",)}.items():
            if not _is(source.get(key), types):
                raise InputError(f"{path}: field 'source.{key}': expected {types[0]}, "
                                 f"got {json_type(source.get(key))}")


_NONE = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
