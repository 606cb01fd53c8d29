"""Parity: an exported graph's outputs against torch's, on real samples and random inputs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dlkit.data.random_inputs import random_in_range, takes_data
from dlkit.errors import DlkitError, InputError
from dlkit.export.graph import OnnxGraph

TOLERANCE = 1e-4  # max abs difference between onnxruntime and torch outputs (float32)
PARITY_BATCHES = (1, 37)  # 37: odd, and different from any batch size used while tracing
# -- parity ---------------------------------------------------------------------------------------
@dataclass
class ParityCase:
    """One set of graph inputs the runtimes are compared on."""

    name: str
    feeds: dict[str, np.ndarray]


def parity_cases(meta: dict, graph: OnnxGraph | None = None, batch_sizes=PARITY_BATCHES,
                 seed: int = 0) -> list[ParityCase]:
    """The inputs an export is checked on: real samples and random ones, at each batch size.

    Classifiers: the first samples of the model's test split (reloaded from ``meta["data"]``;
    skipped with a warning when the data cannot be loaded), and uniform random inputs inside
    the input spec's range; sequence models also at a second sequence length. Other graphs:
    ``graph.random_inputs``. Also for compressors comparing two ONNX files (``graph=None``).
    """
    cases = []
    spec = meta.get("input_spec") or {}
    name = next(iter(graph.example_inputs)) if graph else "input"
    # A model fed the data set's samples is checked on real ones and on random ones inside the
    # data's range; any other graph (a generator's noise) draws its own inputs.
    shapes = [list(t.shape) for t in graph.example_inputs.values()] if graph else [[None, *spec.get("shape", [])]]
    if takes_data(spec, shapes):
        x = data_samples(meta, max(batch_sizes))
        if x is not None:
            cases += [ParityCase(f"data batch {b}", {name: np.resize(x, (b, *x.shape[1:]))}) for b in batch_sizes]
        rng = np.random.default_rng(seed)
        cases += [ParityCase(f"random batch {b}", {name: random_in_range(spec, b, rng)}) for b in batch_sizes]
        if spec.get("kind") == "sequence":
            other = int(spec["shape"][0]) + 5
            cases += [ParityCase(f"random batch {b} length {other}", {name: random_in_range(spec, b, rng, other)})
                      for b in batch_sizes]
    else:
        if graph is None:
            raise InputError("parity_cases: a graph not fed from a data set needs its OnnxGraph to draw inputs")
        cases += [ParityCase(f"random batch {b}", graph.random_inputs(b, seed + i)) for i, b in enumerate(batch_sizes)]
    return cases


def data_samples(meta: dict, n: int) -> np.ndarray | None:
    """The first ``n`` test samples of the data set recorded in meta.json, or None (with a warning)."""
    from dlkit.data.load import load_dataset

    recorded = meta.get("data") or {}
    if "source" not in recorded:
        return None
    try:
        ds = load_dataset(recorded["source"], recorded.get("options", {}), recorded.get("seed", 0))
    except DlkitError as exc:
        print(f"dlkit: warning: parity check without real samples ({exc})", file=sys.stderr)
        return None
    return ds.x_test[:n].astype(np.float32)


def compare(reference: Callable[[dict], dict], candidate: Callable[[dict], dict],
            cases: list[ParityCase]) -> dict:
    """Run both on every case; the max absolute difference overall, per output and per case, and
    ``max_rel_diff``: the difference relative to the reference's magnitude where that is above 1
    (float32 keeps about 7 significant digits: a regressor's outputs in the hundreds differ from
    torch's in the fourth decimal without being any less exact). The tolerance applies to it.

    ``reference`` and ``candidate`` map ``{input name: array}`` to ``{output name: array}``
    (``Session.run`` is one; :func:`torch_runner` makes one of a module). Outputs missing from
    the candidate are an error.
    """
    per_output: dict[str, float] = {}
    per_case = []
    relative = 0.0
    for case in cases:
        want, got = reference(case.feeds), candidate(case.feeds)
        worst = 0.0
        for key, value in want.items():
            if key not in got:
                raise DlkitError(f"parity check: the graph has no output {key!r} (it has {', '.join(got)})")
            a, b = np.asarray(value, np.float64), np.asarray(got[key], np.float64)
            if a.shape != b.shape:
                raise DlkitError(f"parity check ({case.name}): output {key!r} has shape {b.shape}, expected {a.shape}")
            # Equal values (infinities included) and NaN in both count as no difference;
            # NaN on one side only as an infinite one.
            d = np.where(a == b, 0.0, np.abs(a - b))
            d[np.isnan(a) & np.isnan(b)] = 0.0
            diff = float(np.nan_to_num(d, nan=np.inf).max()) if d.size else 0.0
            if d.size:
                scaled = d / np.maximum(1.0, np.nan_to_num(np.abs(a), nan=1.0, posinf=1.0))
                relative = max(relative, float(np.nan_to_num(scaled, nan=np.inf).max()))
            per_output[key] = max(per_output.get(key, 0.0), diff)
            worst = max(worst, diff)
        per_case.append({"case": case.name, "max_abs_diff": worst})
    return {"max_abs_diff": max(per_output.values(), default=0.0), "max_rel_diff": relative,
            "outputs": per_output, "cases": per_case}


def torch_runner(graph: OnnxGraph) -> Callable[[dict], dict]:
    """``feeds -> outputs`` through the graph's torch module (CPU, inference mode)."""
    import torch

    def run(feeds: dict) -> dict:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in graph.example_inputs]
        with torch.inference_mode():
            out = graph.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.detach().float().numpy() for name, o in zip(graph.output_names, out)}

    return run


class ParityError(DlkitError):
    """onnxruntime's outputs differ from the reference by more than the tolerance."""

    def __init__(self, parity: dict, tolerance: float):
        worst = max(parity["cases"], key=lambda c: c["max_abs_diff"])
        super().__init__(f"max abs difference {parity['max_abs_diff']:.3g} > {tolerance:g} (relative to the "
                         f"outputs' magnitude: {parity['max_rel_diff']:.3g}; worst on {worst['case']})")
        self.parity = parity


