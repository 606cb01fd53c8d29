"""The ``clustering`` task, in numpy only (``evaluate``, ``predict``, ``serve`` and ``quantize`` run
it without torch or scikit-learn): metrics of the graph's ``distances``, printing, the export.

The silhouette is the *simplified* (centroid) silhouette of Hruschka et al. (2004): for each
sample, ``(b - a) / max(a, b)`` with ``a`` its distance to its own centroid and ``b`` to the
nearest other one. It needs only the ``[N, K]`` distances the graph returns (the exact silhouette
needs every pair of embeddings), and for k-means it ranks clusterings as the exact one does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def simplified_silhouette(distances: np.ndarray) -> float:
    """Mean ``(b - a) / max(a, b)`` over samples (0 for fewer than 2 clusters or no samples)."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 2 or not len(d):
        return 0.0
    part = np.sort(d, axis=1)
    a, b = part[:, 0], part[:, 1]
    top = np.maximum(a, b)
    return float(np.mean(np.where(top > 0, (b - a) / np.where(top > 0, top, 1.0), 0.0)))


def _contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((li.max() + 1, ci.max() + 1), dtype=np.float64)
    np.add.at(table, (li, ci), 1)
    return table


def adjusted_rand_index(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index (scikit-learn's ``adjusted_rand_score``)."""
    n = len(labels)
    if n < 2:
        return 1.0
    table = _contingency(labels, clusters)
    pairs = lambda v: (v * (v - 1) / 2).sum()  # noqa: E731
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def normalized_mutual_info(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the entropies (scikit-learn's default)."""
    table = _contingency(labels, clusters)
    if table.shape[0] == 1 and table.shape[1] == 1:
        return 1.0
    p = table / table.sum()
    pu, pv = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pu, pv)[nz])).sum())
    entropy = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    mean = (entropy(pu) + entropy(pv)) / 2
    return float(mi / mean) if mean > 0 else 1.0


def metrics(distances: np.ndarray, y: np.ndarray) -> dict:
    """``loss`` (mean squared distance to the own centroid), ``silhouette`` and, when every
    sample has a label (``y >= 0``), ``ari`` and ``nmi`` against the labels."""
    d = np.asarray(distances, dtype=np.float64)
    if not len(d):
        return {"loss": 0.0, "silhouette": 0.0}
    clusters = d.argmin(axis=1)
    out = {"loss": float((d.min(axis=1) ** 2).mean()), "silhouette": simplified_silhouette(d)}
    y = np.asarray(y)
    if len(y) == len(d) and y.size and (y >= 0).all():
        out.update(ari=adjusted_rand_index(y, clusters), nmi=normalized_mutual_info(y, clusters))
    return out


def describe(outputs: dict, names: list[str], meta: dict, top_k: int) -> list[dict]:
    """One line per sample: its cluster and the distance to that cluster's centroid."""
    distances = np.asarray(outputs["distances"], dtype=np.float64)
    clusters = np.asarray(outputs["cluster"]).reshape(-1) if "cluster" in outputs else distances.argmin(1)
    return [{"input": name, "cluster": int(c), "distance": float(row[int(c)]),
             "distances": [float(v) for v in row]} for name, c, row in zip(names, clusters, distances)]


def export(module: Any, meta: dict) -> Any:
    """The graph: raw input ``input`` -> ``cluster`` (int64 ``[N]``) and ``distances`` (``[N, K]``);
    the ONNX metadata's ``labels`` are the cluster ids, ``clusters`` their number."""
    import torch

    from dlkit import OnnxGraph

    from .model import ClusterAutoencoder, ClusterGraph

    ae = next(m for m in module.modules() if isinstance(m, ClusterAutoencoder))
    spec = meta["input_spec"]
    low, high = (spec.get("range") or [0.0, 1.0])[:2]
    example = low + (high - low) * torch.rand((2, *spec["shape"]), generator=torch.Generator().manual_seed(0))
    k = ae.clusters
    return OnnxGraph(module=ClusterGraph(module).eval(), example_inputs={"input": example},
                     output_names=["cluster", "distances"],
                     metadata={"clusters": k, "labels": [str(i) for i in range(k)],
                               "data_labels": meta.get("labels")})
