"""meta.json: what a model version records, and what a client derives from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlkit.errors import InputError


def default_opset(proto) -> int | None:
    """The opset of the default ONNX domain a model (``onnx.ModelProto``) imports; None if it
    imports none. What meta.json's ``onnx.opset`` records."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def input_preprocessing(input_spec: dict) -> dict:
    """What a client does to raw data before feeding the graph (stored in the ONNX metadata).

    Images: convert to ``mode``, resize to ``width`` x ``height`` (bilinear), scale pixels
    linearly from 0..255 to ``range`` (from 255..0 when ``invert``: the model learnt from
    inverted files), lay out as ``layout``. Tabular inputs that the model
    standardises do so inside the graph: feed raw values.
    """
    kind = input_spec.get("kind")
    note = input_spec.get("preprocessing")
    out: dict[str, Any] = {"kind": kind, "dtype": input_spec.get("dtype", "float32")}
    if kind == "image":
        channels, height, width = input_spec["shape"]
        out["image"] = {"mode": {1: "L", 3: "RGB"}.get(channels), "width": width, "height": height,
                        "range": list(input_spec.get("range") or [0.0, 1.0]),
                        "layout": input_spec.get("layout", "NCHW"), "resample": "bilinear"}
        if input_spec.get("invert"):
            out["image"]["invert"] = True
    if isinstance(note, dict) and "standardize" in note:
        out["note"] = "standardisation is inside the graph: feed raw feature values"
    elif note:
        out["note"] = str(note)
    if input_spec.get("features"):
        out["features"] = list(input_spec["features"])
    return out


def parse_labels(labels: str | None) -> list[str] | None:
    """``a,b,c``, or a file: one label per line, or a JSON array of strings."""
    if labels is None:
        return None
    path = Path(labels)
    if path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--labels {labels}: cannot read it ({exc})") from None
        if text.lstrip().startswith("["):
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"--labels {labels}: not a JSON array ({exc})") from None
            if not isinstance(values, list) or not all(isinstance(v, (str, int)) for v in values):
                raise InputError(f"--labels {labels}: expected a JSON array of strings")
            names = [str(v) for v in values]
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [x.strip() for x in labels.split(",")]
    if not names or any(not n for n in names):
        raise InputError(f"--labels {labels!r}: give names as a,b,c or a file with one name per line")
    if len(set(names)) != len(names):
        raise InputError(f"--labels {labels!r}: names repeat")
    return names


def import_task(task: str | None, labels: list[str] | None) -> str | None:
    """An imported model's task: ``--task`` (a registered one), else classification when it has
    labels, else None (no task: predict prints its outputs, quantize checks agreement)."""
    if task is None:
        return "classification" if labels else None
    from dlkit.plugins import get_registry  # lazily: the store layer does not load plugins

    return get_registry().task(task).name  # an unknown name is an InputError listing the registered ones
