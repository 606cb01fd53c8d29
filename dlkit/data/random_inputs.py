"""Random inputs inside an input spec's value range (parity checks and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def takes_data(input_spec: dict, shapes: list[Sequence]) -> bool:
    """Whether a graph with these input shapes (batch axis first) is fed the data set's samples:
    one input, shaped like a sample (dynamic axes match anything). A generator's noise is not."""
    if input_spec.get("kind") in (None, "noise") or len(shapes) != 1:
        return False
    shape, want = list(shapes[0])[1:], list(input_spec.get("shape") or [])
    return len(shape) == len(want) and all(not isinstance(d, int) or d == w for d, w in zip(shape, want))


def random_in_range(input_spec: dict, batch: int, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
    """Uniform random float32 inputs inside the spec's value range (noise inputs: standard normal)."""
    shape = list(input_spec["shape"])
    if length is not None:
        shape[0] = length
    if input_spec.get("kind") == "noise":
        return rng.standard_normal((batch, *shape)).astype(np.float32)
    lo, hi = input_spec.get("range") or [0.0, 1.0]
    return rng.uniform(lo, hi, size=(batch, *shape)).astype(np.float32)


