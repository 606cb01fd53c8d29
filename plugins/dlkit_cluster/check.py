"""The check compressors keep within a tolerance on a clustering model: how many validation
samples keep the float model's cluster, and how much silhouette is lost."""

from __future__ import annotations

import numpy as np

from dlkit import ScoreCheck, graph_outputs

from . import task


class ClusterCheck(ScoreCheck):
    """Agreement with the parent's cluster ids and the silhouette drop, both in points: the drop
    is the larger of ``100 * (1 - agreement)`` and ``100 * (silhouette lost)``, so a tolerance of
    1 keeps at least 99% of the validation samples in their cluster and the silhouette within 0.01."""

    def __init__(self, dataset, session):
        super().__init__(dataset, session, output="distances", score="silhouette", higher_is_better=True,
                         unit="points", scale=100.0, default_tolerance=1.0, metrics=task.metrics)
        self.kind = "cluster agreement and silhouette"
        self.parent = {split: graph_outputs(session, x, "distances").argmin(1)
                       for split, x in (("val", self.x_val), ("test", self.x_test))}
        self.columns = [("val agreement", "val_agreement", ".4f"), ("val silhouette", "val_silhouette", ".4f"),
                        ("test agreement", "test_agreement", ".4f"), ("test silhouette", "test_silhouette", ".4f")]

    def measure(self, session) -> tuple[dict, np.ndarray]:
        """Metrics of both splits plus ``agreement`` with the parent's clusters; the validation distances."""
        row: dict = {}
        kept = None
        for split, x, y in (("val", self.x_val, self.y_val), ("test", self.x_test, self.y_test)):
            d = graph_outputs(session, x, "distances")
            scores = {**task.metrics(d, y), "agreement": float((d.argmin(1) == self.parent[split]).mean())
                      if len(d) else 1.0}
            row.update({f"{split}_{k}": v for k, v in scores.items()})
            kept = d if split == "val" else kept
        return row, kept

    def drop(self, parent: dict, row: dict) -> float:
        moved = 1.0 - row["val_agreement"]
        lost = parent["val_silhouette"] - row["val_silhouette"]
        return max(moved, lost, 0.0) * self.scale

    def ratios(self, parent: dict, row: dict) -> dict:
        base = parent["test_silhouette"]
        return {"silhouette_ratio": row["test_silhouette"] / base if base else None}


def quality(version, dataset, repo, session):
    """The ``clustering`` task's check for compressors (``session``: the float parent's)."""
    return ClusterCheck(dataset, session)
