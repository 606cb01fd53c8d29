"""Quantizing a graph dlkit did not train: user calibration data, and a quality check without labels.

``--calibration-data FILE.npz`` (one array per graph input) calibrates static quantization.
``--data FILE`` is what quality is measured on: a labelled set (an ``.npz`` with ``y``, or any
file dlkit trains on) gives the accuracy check; an ``.npz`` of inputs only gives the
**agreement** check: how far each candidate's outputs are from the float model's on the same
inputs, as a relative difference in percent (mean |candidate - parent| / mean |parent|, over
every output), plus the top-1 agreement when the first output is (batch, classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlkit import InputError

from .measure import batch_of, quality_check


def choose_check(version, repo, session, data: str | None, calibration_data: str | None):
    """The quality check for ``version`` given the user's ``--data`` and ``--calibration-data``:
    the task's own check on labelled data (``--data``, else the recorded data set), else agreement."""
    from dlkit import evaluation_data

    if data is not None and _labelled(data):
        return quality_check(version, evaluation_data(version, data), repo, session)
    if data is not None or calibration_data is not None and not version.meta.get("data"):
        return AgreementCheck(read_inputs(data or calibration_data, session), data or calibration_data)
    if not version.meta.get("data"):
        raise InputError(f"model {version.ref} records no data set: give --calibration-data FILE.npz "
                         f"(one array per input) and optionally --data FILE to measure quality on")
    return quality_check(version, evaluation_data(version), repo, session)


def calibration_feeds(path: str, session, samples: int) -> tuple[dict, dict]:
    """The first ``samples`` of each array in ``path``, and how the calibration was drawn."""
    feeds = read_inputs(path, session)
    n = min(samples, min(len(v) for v in feeds.values()))
    return ({k: np.ascontiguousarray(v[:n]) for k, v in feeds.items()},
            {"source": str(Path(path).resolve()), "samples": int(n), "selection": f"the first {n} samples"})


def read_inputs(path: str, session) -> dict[str, np.ndarray]:
    from dlkit import read_feeds

    feeds = read_feeds(path, session.inputs)
    if any(not info.shape or info.shape[0] is not None for info in session.inputs):
        raise InputError(f"{path}: quantize measures batches; every input of {session.path.name} needs a "
                         f"dynamic first (batch) axis")
    return feeds


def _labelled(path: str) -> bool:
    if Path(path).suffix.lower() != ".npz":
        return True  # CSV, image folders...: read by dlkit's loaders, with their labels
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "y" in npz.files
    except Exception as exc:  # noqa: BLE001 -- a broken file is reported by the reader with its path
        raise InputError(f"{path}: not a readable .npz file ({str(exc)[:200]})") from None


class AgreementCheck:
    """Quality as closeness to the float model's outputs on the user's inputs (no labels)."""

    kind = "agreement"
    unit = "percent"
    default_tolerance = 5.0  # relative output difference in percent

    def __init__(self, feeds: dict[str, np.ndarray], source: str):
        self.feeds = feeds
        self.source = source
        self.reference: list[np.ndarray] | None = None  # the parent's outputs (measured first)

    def measure(self, session) -> tuple[dict, np.ndarray]:
        """(relative difference from the parent and top-1 agreement, every output flattened)."""
        names = [o.name for o in session.outputs]
        outs = session.run(self.feeds, names)
        values = [np.asarray(outs[n], dtype=np.float64) for n in names]
        if self.reference is None:
            self.reference = values
        ref = self.reference
        scale = float(np.mean([np.abs(r).mean() for r in ref])) or 1.0
        diff = float(np.mean([np.abs(v - r).mean() for v, r in zip(values, ref)])) / scale * 100
        top1 = (float((values[0].argmax(-1) == ref[0].argmax(-1)).mean())
                if values[0].ndim == 2 and values[0].shape[1] > 1 else None)
        return {"relative_difference": diff, "top1_agreement": top1}, np.concatenate([v.ravel() for v in values])

    @property
    def columns(self) -> list[tuple[str, str, str]]:
        """What the quantizer's table shows: top-1 agreement (classifier-shaped outputs), then the difference."""
        top1 = self.reference is not None and self.reference[0].ndim == 2 and self.reference[0].shape[1] > 1
        return ([("top-1", "top1_agreement", ".4f")] if top1 else []) + [("rel diff %", "relative_difference", ".2f")]

    def drop(self, parent: dict, row: dict) -> float:
        """The candidate's relative output difference from the parent, in percent."""
        return row["relative_difference"] - parent["relative_difference"]

    def ratios(self, parent: dict, row: dict) -> dict:
        return {}

    def metrics(self, row: dict) -> dict:
        return {"relative_difference": row["relative_difference"], "top1_agreement": row["top1_agreement"],
                "quality_data": self.source}

    def calibration_feeds(self, samples: int) -> tuple[dict, dict]:
        n = min(samples, min(len(v) for v in self.feeds.values()))
        return ({k: np.ascontiguousarray(v[:n]) for k, v in self.feeds.items()},
                {"source": self.source, "samples": int(n), "selection": f"the first {n} samples"})

    def latency_feeds(self, batch: int) -> dict:
        return {k: batch_of(v, batch) for k, v in self.feeds.items()}
