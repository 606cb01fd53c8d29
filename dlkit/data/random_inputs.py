"""Random inputs inside an input spec's value range (parity checks and benchmarks)."""

from __future__ import annotations


import numpy as np




def random_in_range(input_spec: dict, batch: int, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
    """Uniform random float32 inputs inside the spec's value range (noise inputs: standard normal)."""
    shape = list(input_spec["shape"])
    if length is not None:
        shape[0] = length
    if input_spec.get("kind") == "noise":
        return rng.standard_normal((batch, *shape)).astype(np.float32)
    lo, hi = input_spec.get("range") or [0.0, 1.0]
    return rng.uniform(lo, hi, size=(batch, *shape)).astype(np.float32)


