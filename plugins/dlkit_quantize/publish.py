"""Publishing a chosen candidate: lineage, meta.json, the graph's own metadata, and the new version
through ``derive`` (with config.pbtxt for Triton)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from dlkit import InputError, ModelRepository, ModelVersion, __version__

from .graph import set_metadata
from .methods import Candidate

PARENT = "float32"


def lineage(version: ModelVersion, repo: ModelRepository) -> list[dict]:
    """The chain that led to ``version``, oldest first, ``version`` last: name, version, method."""
    entry = {"name": version.name, "version": version.version, "method": version.meta.get("method")}
    recorded = version.meta.get("lineage")
    if isinstance(recorded, list):
        return [*recorded, entry]
    chain = [entry]
    seen = {(version.name, version.version)}
    parent = version.meta.get("parent")
    while isinstance(parent, dict) and parent.get("name") and len(chain) < 100:
        key = (parent["name"], parent.get("version"))
        if key in seen:
            break
        seen.add(key)
        try:
            ancestor = repo.resolve(f"{parent['name']}:{parent['version']}")
            method, parent = ancestor.meta.get("method"), ancestor.meta.get("parent")
        except (InputError, KeyError, TypeError):
            method, parent = None, None  # gone from the repository: the chain stops here
        chain.insert(0, {"name": key[0], "version": key[1], "method": method})
    return chain


def parent_ref(version: ModelVersion) -> str | None:
    parent = version.meta.get("parent")
    return f"{parent['name']}:{parent['version']}" if isinstance(parent, dict) and parent.get("name") else None


INHERITED = ("arch", "plugin", "task", "hparams", "input_spec", "labels", "num_classes", "data", "params")


def build_meta(version, repo, candidate, o, tolerance, prep, calibration, check, chosen, report, sessions) -> dict:
    import onnx
    import onnxruntime

    return {
        "metrics": check.metrics(chosen),
        "lineage": lineage(version, repo),
        "quantization": {
            "method": candidate.method, "candidate": candidate.name, "options": candidate.options,
            "requested": o["method"], "auto": o["method"] == "auto",
            "selection": report["selection"],
            "kept_float": candidate.options.get("nodes_to_exclude", []), "kept_precision": report["kept_precision"],
            "tolerance": tolerance, "quality": check.kind, "drop_unit": check.unit, "preprocess": prep,
            "calibration": calibration.description if calibration and candidate.method in ("static", "qat") else None,
            "providers": sessions[PARENT].providers,
            "measured_on": {"machine": platform.machine(), "processor": platform.processor() or None,
                            "system": platform.system()},
        },
        "measurements": {"providers": report["providers"], "threads": o["threads"], "table": report["table"]},
        "versions": {"dlkit": __version__, "python": platform.python_version(), "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }


def stamp(path: Path, parent: ModelVersion, repo: ModelRepository, name: str, candidate: Candidate) -> None:
    """Give a built graph the parent's ONNX metadata (labels, input spec...), updated for the new model."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in onnx.load(str(parent.onnx_path), load_external_data=False).metadata_props}
    props.update({k: json.dumps(v) for k, v in {
        "model": name, "version": repo.next_version(name), "parent": {"name": parent.name, "version": parent.version},
        "method": f"quantize-{candidate.method}", "quantization": candidate.name,
    }.items()})
    set_metadata(model, props)
    onnx.save(model, str(path))


def publish(repo: ModelRepository, parent: ModelVersion, name: str, method: str, onnx_file: Path, meta: dict,
           session) -> ModelVersion:
    """Publish model.onnx and meta.json as a model derived from ``parent``, then config.pbtxt."""
    import hashlib

    import onnx

    from dlkit import default_opset, derive, write_bytes

    data = onnx_file.read_bytes()
    opset = default_opset(onnx.load_from_string(data))
    # What a quantized model is stays its parent's; how it was trained ("trainer", "train") does not apply.
    with derive(repo, parent, method, name, inherit=INHERITED) as new:
        write_bytes(new.path / "model.onnx", data)
        new.meta.update(meta, onnx={
            "opset": opset, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "inputs": [i.as_dict() for i in session.inputs], "outputs": [o.as_dict() for o in session.outputs],
            "source": "dlkit quantize",
        })
    version = new.version
    try:
        from dlkit import write_triton_config

        write_triton_config(version)
    except Exception as exc:  # noqa: BLE001 -- the model is complete without it; Triton users are told why
        print(f"dlkit: warning: no config.pbtxt for {version.ref}: {exc}", file=sys.stderr)
    return version
