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
    _to_model_labels(ds, version)
    return ds


def _to_model_labels(ds, version: ModelVersion) -> None:
    """Number ``ds``'s classes as the model does, so a file holding only some of the model's
    classes is scored on those; a class the model does not know is an InputError."""
    known = list(version.meta.get("labels") or [])
    if ds.labels == known:
        return
    unknown = [label for label in ds.labels if label not in known]
    if unknown:
        raise InputError(f"data {ds.name} has label {unknown[0]!r} that model {version.ref} does not know "
                         f"(its labels: {', '.join(known) or 'none'})")
    index = np.array([known.index(label) for label in ds.labels], dtype=np.int64)
    for part in ("train", "val", "test"):
        setattr(ds, f"y_{part}", index[np.asarray(getattr(ds, f"y_{part}"), dtype=np.int64)])
    ds.labels = known


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


SPLITS = ("train", "val", "test", "all")


def evaluate(version: ModelVersion, runtime: str = "torch", data: str | None = None, split: str | None = None,
             provider: str = "auto", threads: int | None = None) -> dict:
    """The task's metrics of ``version`` on a split of its data set (or of ``data``), on ``threads``
    compute threads (default :func:`dlkit.training.threads.resolve_threads`).

    ``split`` is ``train``, ``val``, ``test`` or ``all`` (every row); by default ``test`` of the
    model's own data set and ``all`` of another one given as ``data``. ``data`` may hold only some
    of the model's classes (a classifier is scored on the rows it has)."""
    from dlkit.plugins import get_registry
    from dlkit.training.threads import use_threads

    threads = use_threads(threads)
    task = get_registry().task_of(version.meta)
    if task is None:
        raise InputError(f"model {version.ref} records no task: evaluate needs one (classification, regression...)")
    split = split or ("all" if data else "test")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: expected {', '.join(SPLITS)}")
    ds = evaluation_data(version, data)
    run, providers = _runner(version, runtime, task, provider, threads)
    parts = [ds.split(s) for s in (("train", "val", "test") if split == "all" else (split,))]
    outputs = np.concatenate([run(x) for x, _ in parts])  # part by part: a streamed split stays lazy
    y = np.concatenate([np.asarray(y) for _, y in parts])
    metrics = task.metrics(outputs, y)
    if ds.labels:  # a classifier: how many of its classes the scored rows hold
        metrics["classes"] = f"{len(np.unique(y))} of {len(ds.labels)}"
    return {"model": version.name, "version": version.version, "runtime": runtime, "providers": providers,
            "task": task.name, "data": ds.name, "split": split, "samples": int(len(y)), **metrics,
            "threads": threads}


def _runner(version: ModelVersion, runtime: str, task, provider: str, threads: int):
    """``(outputs_of(x), providers)``: the task's output of the model over ``x`` in ``runtime``."""
    if runtime == "torch":
        from dlkit.training.build import load_model
        from dlkit.training.supervised import model_outputs

        module, _ = load_model(version)
        return (lambda x: model_outputs(module, x, batch_size=512)), ["torch"]
    if runtime == "onnx":
        from dlkit.infer.session import Session

        if not version.has_onnx():
            raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
        session = Session(version.onnx_path, provider, threads=threads)
        return (lambda x: graph_outputs(session, x, task.output)), session.providers
    raise InputError(f"unknown runtime {runtime!r}: expected torch or onnx")
