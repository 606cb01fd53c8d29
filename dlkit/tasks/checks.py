"""Quality checks for compressors: how much of a model's score a compressed candidate may lose.

A task's ``quality(version, dataset, repo, session)`` returns a check with this interface (the
quantizer calls nothing else): ``kind``, ``unit`` and ``default_tolerance``;
``measure(session) -> (row, outputs)``; ``drop(parent_row, row)`` in ``unit``; ``columns``, the
``(header, row key, format)`` of what the quantizer's table shows;
``ratios(parent_row, row)``; ``metrics(row)`` for meta.json; ``calibration_feeds(n)`` and
``latency_feeds(batch)``. :class:`ScoreCheck` serves any task scored by a metric of its outputs
on labelled data (accuracy, RMSE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlkit.infer.evaluate import graph_outputs


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` samples from ``x``, repeated when it holds fewer."""
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(x.dtype))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


class ScoreCheck:
    """A score of the model's ``output`` on the validation split (what selection uses) and the
    test split (what is reported). The drop is the score lost: in points (``scale`` 100) for a
    score where higher is better, in percent of the parent's for an error."""

    def __init__(self, dataset: Any, session: Any, *, output: str, score: str, higher_is_better: bool, unit: str,
                 scale: float | None, default_tolerance: float, metrics: Callable[[np.ndarray, np.ndarray], dict],
                 comparable: Callable[[np.ndarray], np.ndarray] | None = None):
        self.dataset = dataset
        self.x_val, self.y_val = dataset.split("val")
        self.x_test, self.y_test = dataset.split("test")
        self.input_name = session.inputs[0].name
        self.output, self.score, self.higher = output, score, higher_is_better
        self.kind, self.unit, self.scale = score, unit, scale
        self.default_tolerance = default_tolerance
        self._metrics = metrics
        self._comparable = comparable or (lambda outputs: outputs)
        self.columns = [(f"val {score}", f"val_{score}", ".4f"), (f"test {score}", f"test_{score}", ".4f")]

    def measure(self, session: Any) -> tuple[dict, np.ndarray]:
        """(validation and test metrics, the validation outputs compared with the parent's)."""
        val_out = graph_outputs(session, self.x_val, self.output)
        val = self._metrics(val_out, self.y_val)
        test = self._metrics(graph_outputs(session, self.x_test, self.output), self.y_test)
        row = {f"val_{k}": v for k, v in val.items()} | {f"test_{k}": v for k, v in test.items()}
        return row, self._comparable(val_out)

    def drop(self, parent: dict, row: dict) -> float:
        key = f"val_{self.score}"
        lost = parent[key] - row[key] if self.higher else row[key] - parent[key]
        if self.scale is not None:
            return lost * self.scale
        return lost / parent[key] * 100 if parent[key] else lost * 100

    def ratios(self, parent: dict, row: dict) -> dict:
        key = f"test_{self.score}"
        return {f"{self.score}_ratio": _ratio(row[key], parent[key])}

    def metrics(self, row: dict) -> dict:
        return {k: v for k, v in row.items() if k.startswith(("test_", "val_"))}

    def calibration_feeds(self, samples: int) -> tuple[dict, dict]:
        from dlkit.data.dataset import stratified_sample

        x, y = self.dataset.split("train")
        source = self.dataset.source
        seed = source.get("seed", 0)
        idx = stratified_sample(y, samples, seed)
        n = len(idx)
        return ({self.input_name: np.ascontiguousarray(x[idx].astype(np.float32))},
                {"source": source.get("source"), "options": source.get("options", {}), "seed": seed,
                 "split": "train", "samples": int(n),
                 "selection": f"{n} samples of the training split, stratified by class and shuffled from seed {seed}"})

    def latency_feeds(self, batch: int) -> dict:
        # Only the rows the batch needs: a streamed split is never read (or converted) whole.
        return {self.input_name: batch_of(np.asarray(self.x_val[:batch], dtype=np.float32), batch)}
