"""Measuring candidates on this machine: quality (accuracy, or a generator's Frechet distance),
size on disk and latency at batch 1 and 64, all through the same onnxruntime provider.

Latency is the fastest of many single calls, the parent and every candidate taking turns call
after call. On a shared machine other processes preempt some calls and slow them by any amount;
the minimum is the measure they disturb least (the advice of Python's ``timeit``), and taking
turns lets a slow spell hit every model alike. Single calls rather than means of several: the
shorter the timed span, the likelier one of them ran undisturbed. A candidate still ten times
slower than the parent after the first rounds (ConvInteger, typically) stops being timed: it
cannot be the fastest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlkit import DlkitError, InputError

BATCH_SIZES = (1, 64)
MIN_ROUNDS = 10
MAX_ROUNDS = 20000
GIVE_UP_RATIO = 10.0
GIVE_UP_ROUNDS = MIN_ROUNDS


def size_on_disk(path: Path) -> int:
    """Bytes of an ONNX file and of the external data files it names."""
    import onnx

    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def time_sessions(sessions: dict[str, Any], feeds: dict[int, dict], seconds: float,
                  reference: str | None = None) -> dict[str, dict[int, float]]:
    """Fastest call, in milliseconds, of each session at each batch size in ``feeds``: rounds of
    one call each, for ``seconds`` per batch size (at least :data:`MIN_ROUNDS` rounds)."""
    out: dict[str, dict[int, float]] = {name: {} for name in sessions}
    clock = time.perf_counter
    for batch, feed in feeds.items():
        runs = {name: s.session.run for name, s in sessions.items()}
        for run in runs.values():
            for _ in range(3):  # warm-up: first calls allocate and pick kernels
                run(None, feed)
        best = {name: float("inf") for name in runs}
        active = list(runs.items())
        started = clock()
        rounds = 0
        while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or clock() - started < seconds):
            for name, run in active:
                t0 = clock()
                run(None, feed)
                elapsed = clock() - t0
                if elapsed < best[name]:
                    best[name] = elapsed
            rounds += 1
            if rounds == GIVE_UP_ROUNDS and reference in best:
                active = [(n, r) for n, r in active if n == reference or best[n] <= GIVE_UP_RATIO * best[reference]]
        for name in runs:
            out[name][batch] = best[name] * 1e3
    return out


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` samples from ``x``, repeated when it holds fewer."""
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(x.dtype))


class AccuracyCheck:
    """A classifier's quality: accuracy on the validation split (what ``auto`` selects on) and
    on the test split (what is reported); the drop is in accuracy points. The outputs compared
    with the parent's are the validation split's probabilities."""

    kind = "accuracy"
    unit = "points"
    default_tolerance = 0.5

    def __init__(self, version, dataset, session):
        self.dataset = dataset
        self.x_val, self.y_val = dataset.split("val")
        self.x_test, self.y_test = dataset.split("test")
        self.input_name = session.inputs[0].name

    def measure(self, session) -> tuple[dict, np.ndarray]:
        """(accuracies and test loss, validation-split probabilities)."""
        from dlkit import onnx_logits, softmax_cross_entropy

        logits = onnx_logits(session, self.x_val)
        val, _ = softmax_cross_entropy(logits, self.y_val)
        test, loss = softmax_cross_entropy(onnx_logits(session, self.x_test), self.y_test)
        shifted = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
        return {"val_accuracy": val, "test_accuracy": test, "test_loss": loss}, shifted / shifted.sum(1, keepdims=True)

    def drop(self, parent: dict, row: dict) -> float:
        """Validation accuracy lost, in points (negative: gained)."""
        return (parent["val_accuracy"] - row["val_accuracy"]) * 100

    def ratios(self, parent: dict, row: dict) -> dict:
        return {"accuracy_ratio": _ratio(row["test_accuracy"], parent["test_accuracy"])}

    def metrics(self, row: dict) -> dict:
        return {k: row[k] for k in ("test_accuracy", "val_accuracy", "test_loss")}

    def calibration_feeds(self, samples: int) -> tuple[dict, dict]:
        x, _ = self.dataset.split("train")
        n = min(samples, len(x))
        source = self.dataset.source
        return ({self.input_name: np.ascontiguousarray(x[:n].astype(np.float32))},
                {"source": source.get("source"), "options": source.get("options", {}), "seed": source.get("seed", 0),
                 "split": "train", "samples": int(n), "selection": f"the first {n} samples of the training split"})

    def latency_feeds(self, batch: int) -> dict:
        return {self.input_name: batch_of(self.x_val.astype(np.float32), batch)}


class FrechetCheck:
    """A generator's quality: the Frechet distance between a judge classifier's features of real
    training images and of generated ones (the GAN plugin's measure), on the same noise for the
    parent and every candidate; the drop is the distance's increase in percent. The outputs
    compared with the parent's are the generated images."""

    kind = "frechet"
    unit = "percent"
    default_tolerance = 10.0
    SAMPLES = 1000
    SEED = 1234

    def __init__(self, version, dataset, repo, session):
        try:
            from dlkit_gan import quality
        except ImportError:
            raise InputError(f"model {version.ref} is a generator: its quality check needs the gan plugin "
                             f"(dlkit_gan.quality.frechet_distance), which is not installed") from None
        self.quality = quality
        self.dataset = dataset
        recorded = (version.meta.get("metrics") or {}).get("judge")
        judge = None
        if recorded:
            try:
                judge = repo.resolve(recorded)
            except InputError:
                print(f"dlkit: warning: {version.ref}'s judge {recorded} is not in the repository; "
                      f"using the cached or a new one", file=sys.stderr)
        if judge is None:
            judge = quality.obtain_judge("auto", dataset, repo, 0, 15, quiet=False)
        self.judge = quality.Judge(judge)
        self.judge_ref = judge.ref
        self.real = self.judge(dataset.split("train")[0])[0]
        inputs = {i.name: i for i in session.inputs}
        if "noise" not in inputs:
            raise InputError(f"{version.onnx_path}: a generator graph needs a 'noise' input, found {', '.join(inputs)}")
        latent = inputs["noise"].shape[-1]
        self.latent = latent if isinstance(latent, int) else int((version.meta.get("hparams") or {}).get("latent", 0))
        self.label_dtype = inputs["label"].dtype if "label" in inputs else None
        self.conditional = self.label_dtype is not None
        self.classes = len(version.meta.get("labels") or [])

    def _feeds(self, n: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        feeds = {"noise": rng.standard_normal((n, self.latent), dtype=np.float32)}
        if self.conditional:
            feeds["label"] = (np.arange(n) % max(self.classes, 1)).astype(self.label_dtype)
        return feeds

    def measure(self, session) -> tuple[dict, np.ndarray]:
        """(Frechet distance, the generated images)."""
        feeds = self._feeds(self.SAMPLES, self.SEED)
        images = np.concatenate([session.run({k: v[i:i + 500] for k, v in feeds.items()}, ["image"])["image"]
                                 for i in range(0, self.SAMPLES, 500)]).astype(np.float32)
        features, _ = self.judge(images)
        return {"frechet_distance": self.quality.frechet_distance(self.real, features)}, images

    def drop(self, parent: dict, row: dict) -> float:
        """Increase of the Frechet distance over the parent's, in percent."""
        base = parent["frechet_distance"]
        return (row["frechet_distance"] - base) / base * 100 if base > 0 else row["frechet_distance"] * 100

    def ratios(self, parent: dict, row: dict) -> dict:
        return {"frechet_ratio": _ratio(row["frechet_distance"], parent["frechet_distance"])}

    def metrics(self, row: dict) -> dict:
        return {"frechet_distance": row["frechet_distance"], "judge": self.judge_ref,
                "quality_samples": self.SAMPLES}

    def calibration_feeds(self, samples: int) -> tuple[dict, dict]:
        return self._feeds(samples, 0), {"source": "standard normal noise" + (" and cycling labels" if self.conditional else ""),
                                         "seed": 0, "samples": int(samples)}

    def latency_feeds(self, batch: int) -> dict:
        return self._feeds(batch, 1)


def quality_check(version, dataset, repo, session):
    """The check that fits the model's task (``session``: the parent's, for its input names)."""
    task = version.meta.get("task", "classification")
    if task == "classification":
        return AccuracyCheck(version, dataset, session)
    if task == "generation":
        return FrechetCheck(version, dataset, repo, session)
    raise DlkitError(f"model {version.ref}: no quality check for task {task!r}")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None
