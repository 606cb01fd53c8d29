"""The ``classification`` task: logits out, cross-entropy in training, accuracy as the score."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlkit.infer.evaluate import softmax_cross_entropy


def metrics(logits: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of logits against class indices."""
    accuracy, loss = softmax_cross_entropy(logits, np.asarray(y, dtype=np.int64))
    return {"accuracy": accuracy, "loss": loss}


def loss(out: Any, y: Any, config: dict, data: Any = None) -> Any:
    """Cross-entropy (with the trainer's ``label_smoothing``)."""
    import torch.nn.functional as F

    return F.cross_entropy(out, y, label_smoothing=config.get("label_smoothing", 0.0))


def batch_score(out: Any, y: Any) -> Any:
    """Correct predictions in a training batch (summed into ``train_accuracy``)."""
    return out.detach().argmax(1).eq(y).sum()


def export(module: Any, meta: dict) -> Any:
    """A classifier's graph: input ``input`` -> ``logits`` and ``probabilities``."""
    from dlkit.export.graph import classifier_graph

    return classifier_graph(module, meta)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def describe(outputs: dict, names: list[str], meta: dict, top_k: int) -> list[dict]:
    """One prediction per sample: the arg-max label and the ``top_k`` most probable ones."""
    probs = outputs["probabilities"] if "probabilities" in outputs else softmax(outputs["logits"])
    labels = meta.get("labels")

    def label(i: int) -> str:
        return labels[i] if labels and i < len(labels) else str(i)

    out = []
    for name, row in zip(names, probs):
        order = np.argsort(-row, kind="stable")[:top_k]
        best = int(order[0])
        out.append({"input": name, "label": label(best), "class": best, "probability": float(row[best]),
                    "top_k": [{"label": label(int(i)), "class": int(i), "probability": float(row[i])} for i in order]})
    return out


def quality(version: Any, dataset: Any, repo: Any, session: Any) -> Any:
    """Accuracy on the validation split, in points: what a compressor may lose."""
    from dlkit.tasks.checks import ScoreCheck

    return ScoreCheck(dataset, session, output="logits", score="accuracy", higher_is_better=True, unit="points",
                      scale=100.0, default_tolerance=0.5, metrics=metrics,
                      comparable=softmax)  # output_difference compares probabilities
