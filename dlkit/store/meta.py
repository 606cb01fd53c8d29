"""meta.json: what a model version records, and what a client derives from it."""

from __future__ import annotations

from typing import Any





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


