"""The ``regression`` task: numbers out, mean squared error on standardised targets in training.

Targets are standardised with the training split's statistics for the loss, and the model's
outputs are mapped back inside it (:func:`dlkit.training.build.build_model` wraps it), so the
exported graph's ``prediction`` is in the target's own units and ``predict`` prints those.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    """RMSE, MSE and MAE (in the targets' units), R², and ``loss``: the MSE in units of each
    target's variance (1 - R², averaged over targets), on the scale of the training loss."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if not len(y):
        return {"loss": 0.0, "mse": 0.0, "rmse": 0.0, "mae": 0.0, "r2": 0.0}
    err = pred - y
    mse = float((err ** 2).mean())
    var = ((y - y.mean(axis=0)) ** 2).mean(axis=0)
    unexplained = float(np.mean((err ** 2).mean(axis=0) / np.where(var > 0, var, 1.0)))
    return {"loss": unexplained, "mse": mse, "rmse": mse ** 0.5, "mae": float(np.abs(err).mean()),
            "r2": 1.0 - unexplained}


def loss(out: Any, y: Any, config: dict, data: Any = None) -> Any:
    """Mean squared error in standard deviations of each target (the training split's), so the
    learning rate does not depend on the targets' units."""
    import torch
    import torch.nn.functional as F

    out = out.reshape(y.shape)
    std = (getattr(data, "target_spec", None) or {}).get("std")
    if not std:
        return F.mse_loss(out, y)
    scale = torch.as_tensor(std, dtype=out.dtype, device=out.device)
    return F.mse_loss(out / scale, y / scale)


def export(module: Any, meta: dict) -> Any:
    """A regressor's graph: input ``input`` -> ``prediction`` (``[batch, targets]``)."""
    from dlkit.export.graph import OnnxGraph, example_input, sequence_axes

    return OnnxGraph(module=module, example_inputs={"input": example_input(meta)}, output_names=["prediction"],
                     dynamic_axes=sequence_axes(meta))


def describe(outputs: dict, names: list[str], meta: dict, top_k: int) -> list[dict]:
    """One prediction per sample: the predicted value of each target."""
    targets = (meta.get("target_spec") or {}).get("names") or ["prediction"]
    pred = np.asarray(outputs["prediction"], dtype=np.float64).reshape(len(names), -1)
    return [{"input": name, **{t: float(v) for t, v in zip(targets, row)}, "prediction": [float(v) for v in row]}
            for name, row in zip(names, pred)]


def quality(version: Any, dataset: Any, repo: Any, session: Any) -> Any:
    """RMSE on the validation split; a compressor may raise it by the tolerance, in percent."""
    from dlkit.tasks.checks import ScoreCheck

    return ScoreCheck(dataset, session, output="prediction", score="rmse", higher_is_better=False, unit="percent",
                      scale=None, default_tolerance=2.0, metrics=metrics)
