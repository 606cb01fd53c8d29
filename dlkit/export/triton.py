"""Triton Inference Server's config.pbtxt for a model folder, so Triton can serve the same repository."""

from __future__ import annotations

from pathlib import Path

from dlkit.errors import DlkitError
from dlkit.store.atomic import write_bytes
from dlkit.store.repository import ModelVersion, is_version

TRITON_MAX_BATCH = 64
LABEL_FILE = "labels.txt"  # beside config.pbtxt, one label per line: Triton's label_filename
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
    "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}


# -- Triton ---------------------------------------------------------------------------------------
def write_triton_config(version: ModelVersion, max_batch_size: int = TRITON_MAX_BATCH) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` for Triton's onnxruntime backend; returns its path.

    The batch dimension is implicit (``max_batch_size`` > 0), so ``dims`` leave it out and
    other dynamic axes are -1. Triton loads the versions listed under ``version_policy``:
    those that have a model.onnx with the same inputs and outputs as this one.
    """
    path, text = triton_config_for(version, version.meta["onnx"], max_batch_size)
    labels = label_file_for(version, version.meta["onnx"])
    if labels is not None:  # first: a config.pbtxt never names a label file that is not there
        write_bytes(*labels)
    write_bytes(path, text.encode())
    return path


def label_file_for(version: ModelVersion, record: dict) -> tuple[Path, bytes] | None:
    """labels.txt beside config.pbtxt (one label per line, as Triton reads ``label_filename``),
    or None when the model has no labels or no output holding class scores."""
    if not _labelled_outputs(version, record["outputs"]):
        return None
    labels = [" ".join(str(label).split()) for label in version.meta["labels"]]  # one line each
    return version.inside(version.path.parent / LABEL_FILE), ("\n".join(labels) + "\n").encode()


def _labelled_outputs(version: ModelVersion, outputs: list[dict]) -> list[str]:
    """The outputs that hold one score per label of meta.json (the task's ``scores``), if any."""
    labels = version.meta.get("labels")
    if not isinstance(labels, list) or not labels:
        return []
    from dlkit.plugins import get_registry

    try:
        task = get_registry().task_of(version.meta)
    except DlkitError:  # a task no installed plugin registers: no labels, as the server does
        return []
    names = {t["name"] for t in outputs}
    return [name for name in (task.scores if task is not None else ()) if name in names]


def triton_config_for(version: ModelVersion, record: dict, max_batch_size: int = TRITON_MAX_BATCH
                      ) -> tuple[Path, str]:
    """Where ``version``'s config.pbtxt goes and its text, ``version`` taken as exported with
    the onnx ``record`` (export publishes the config together with the model)."""
    folder = version.path.parent
    versions = []
    for p in sorted(folder.iterdir(), key=lambda p: int(p.name) if is_version(p.name) else -1):
        if p == version.path:
            versions.append(version.version)
            continue
        if not (is_version(p.name) and (p / "model.onnx").is_file()):
            continue
        other = ModelVersion(version.name, int(p.name), p)
        try:
            same = {k: other.meta.get("onnx", {}).get(k) for k in ("inputs", "outputs")} == \
                   {k: record[k] for k in ("inputs", "outputs")}
        except DlkitError:
            same = False
        if same:
            versions.append(int(p.name))
    text = triton_config(version.name, record["inputs"], record["outputs"], max_batch_size, versions,
                         _labelled_outputs(version, record["outputs"]))
    return version.inside(folder / "config.pbtxt"), text


def triton_config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                  versions: list[int], labelled: list[str] = ()) -> str:
    """A Triton model configuration (protobuf text format) for an onnxruntime model; the outputs
    in ``labelled`` name labels.txt as their ``label_filename`` (Triton's classification labels)."""

    def tensors(kind: str, items: list[dict]) -> str:
        blocks = []
        for t in items:
            dtype = TRITON_TYPES.get(t["dtype"])
            if dtype is None:
                raise DlkitError(f"config.pbtxt: {kind} {t['name']!r} has dtype {t['dtype']}, which Triton cannot take")
            # max_batch_size 0: no implicit batch axis, the dims are the whole shape.
            dims = ", ".join("-1" if d is None else str(d) for d in t["shape"][1 if max_batch_size else 0:])
            # A tensor of one value per sample (shape [batch]) is dims [1] reshaped to [] for Triton.
            shape = f"dims: [ {dims} ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
            label = f'\n    label_filename: "{LABEL_FILE}"' if t["name"] in labelled else ""
            blocks.append(f'  {{\n    name: "{t["name"]}"\n    data_type: {dtype}\n    {shape}{label}\n  }}')
        return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"

    listed = ", ".join(map(str, versions))
    return (f'# Written by dlkit export onnx: serve this folder with Triton Inference Server too.\n'
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}\n"
            + tensors("input", inputs) + tensors("output", outputs)
            + "dynamic_batching { }\n")
