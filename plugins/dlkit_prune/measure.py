"""Size and latency of a pruned model against its parent, measured like quantization's: the
same onnxruntime provider, one thread, calls interleaved, the median of per-round minimums."""

from __future__ import annotations

import time

import numpy as np

ROUNDS_MIN = 7


def compare(parent, pruned, seconds: float) -> dict:
    """Ratios (pruned / parent) of bytes on disk and latency at batch 1 and 64; latency only when
    the parent has a model.onnx (pruning never writes into the parent)."""
    out = {"size_ratio": None, "latency_b1_ratio": None, "latency_b64_ratio": None}
    if not parent.has_onnx():
        out["note"] = f"{parent.ref} has no model.onnx: export it to measure the speed-up"
        return out
    from dlkit import Session

    out["size_ratio"] = pruned.onnx_path.stat().st_size / parent.onnx_path.stat().st_size
    sessions = [Session(v.onnx_path, "cpu", threads=1) for v in (parent, pruned)]
    name = sessions[0].inputs[0].name
    x = np.asarray(np.random.default_rng(0).random((64, *parent.meta["input_spec"]["shape"])), dtype=np.float32)
    for batch in (1, 64):
        feed = {name: x[:batch]}
        best = [[], []]
        started = time.perf_counter()
        while len(best[0]) < ROUNDS_MIN or time.perf_counter() - started < seconds / 2:
            for i, s in enumerate(sessions):
                t = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    s.session.run(None, feed)
                    t.append(time.perf_counter() - t0)
                best[i].append(min(t))
            if len(best[0]) > 2000:
                break
        parent_ms, pruned_ms = (float(np.median(b)) * 1e3 for b in best)
        out[f"latency_b{batch}_ms"] = {"parent": parent_ms, "pruned": pruned_ms}
        out[f"latency_b{batch}_ratio"] = pruned_ms / parent_ms
    return out
