"""``dlkit evaluate``: a model's task metrics (a classifier's accuracy and loss, a regressor's
RMSE, MAE and R²) on a split of its data, through torch or onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlkit.errors import InputError
from dlkit.store.repository import ModelVersion


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) from logits, computed in numpy."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean()) if len(y) else 0.0
    acc = float((logits.argmax(1) == y).mean()) if len(y) else 0.0
    return acc, loss


def graph_outputs(session, x: np.ndarray, output: str, batch_size: int = 256) -> np.ndarray:
    """One output of a single-input graph over ``x``, run in batches."""
    name = session.inputs[0].name
    parts = [session.run({name: x[i:i + batch_size].astype(np.float32)}, [output])[output]
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def evaluation_data(version: ModelVersion, data: str | None = None):
    """The data set recorded in meta.json (the same split), or another source given by the user."""
    from dlkit.data.streaming import cache_dir

    with cache_dir(version.path.parent.parent / ".cache"):  # the repository's, as when it trained
        ds = _load(version, data)
    expected = version.meta["input_spec"]
    if list(ds.input_spec["shape"]) != list(expected["shape"]) and expected["kind"] != "sequence":
        raise InputError(f"data {ds.name} has input shape {ds.input_spec['shape']}, model {version.ref} "
                         f"expects {expected['shape']}")
    if ds.labels != version.meta.get("labels"):
        raise InputError(f"data {ds.name} has labels {ds.labels}, model {version.ref} has {version.meta.get('labels')}")
    return ds


def _load(version: ModelVersion, data: str | None):
    """Load ``data``, or the data set meta.json records, with the options it was trained with."""
    from dlkit.data.load import load_dataset

    recorded = version.meta.get("data") or {}
    if data:
        # Another file of the same kind is read the way the training file was (e.g. the same
        # data.target column); a different kind of source gets its loader's defaults.
        same_kind = Path(data).suffix.lower() == Path(str(recorded.get("source", ""))).suffix.lower()
        ds = load_dataset(data, recorded.get("options", {}) if same_kind else {}, recorded.get("seed", 0))
    else:
        if "source" not in recorded:
            raise InputError(f"model {version.ref} records no data set; pass --data")
        ds = load_dataset(recorded["source"], recorded.get("options", {}), recorded.get("seed", 0))
    return ds


def evaluate(version: ModelVersion, runtime: str = "torch", data: str | None = None, split: str = "test",
             provider: str = "auto", threads: int | None = None) -> dict:
    """The task's metrics of ``version`` on a split of its data set (or of ``data``), on ``threads``
    compute threads (default :func:`dlkit.training.threads.resolve_threads`)."""
    from dlkit.plugins import get_registry
    from dlkit.training.threads import use_threads

    threads = use_threads(threads)
    task = get_registry().task_of(version.meta)
    if task is None:
        raise InputError(f"model {version.ref} records no task: evaluate needs one (classification, regression...)")
    ds = evaluation_data(version, data)
    x, y = ds.split(split)
    if runtime == "torch":
        from dlkit.training.build import load_model
        from dlkit.training.supervised import model_outputs

        module, _ = load_model(version)
        outputs = model_outputs(module, x, batch_size=512)
        providers = ["torch"]
    elif runtime == "onnx":
        from dlkit.infer.session import Session

        if not version.has_onnx():
            raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
        session = Session(version.onnx_path, provider, threads=threads)
        outputs = graph_outputs(session, x, task.output)
        providers = session.providers
    else:
        raise InputError(f"unknown runtime {runtime!r}: expected torch or onnx")
    metrics = task.metrics(outputs, y)
    return {"model": version.name, "version": version.version, "runtime": runtime, "providers": providers,
            "task": task.name, "data": ds.name, "split": split, "samples": int(len(y)), **metrics,
            "threads": threads}
