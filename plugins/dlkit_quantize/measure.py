"""Measuring candidates on this machine: quality (the check the model's task gives: accuracy, RMSE,
a generator's Frechet distance), size on disk and latency at batch 1 and 64, all through the same
onnxruntime provider.

Latency is the fastest of many single calls, the parent and every candidate taking turns call
after call. On a shared machine other processes preempt some calls and slow them by any amount;
the minimum is the measure they disturb least (the advice of Python's ``timeit``), and taking
turns lets a slow spell hit every model alike. Single calls rather than means of several: the
shorter the timed span, the likelier one of them ran undisturbed. A candidate still ten times
slower than the parent after the first rounds (ConvInteger, typically) stops being timed: it
cannot be the fastest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dlkit import DlkitError

BATCH_SIZES = (1, 64)
MIN_ROUNDS = 10
MAX_ROUNDS = 20000
GIVE_UP_RATIO = 10.0
GIVE_UP_ROUNDS = MIN_ROUNDS


def size_on_disk(path: Path) -> int:
    """Bytes of an ONNX file and of the external data files it names."""
    import onnx

    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def time_sessions(sessions: dict[str, Any], feeds: dict[int, dict], seconds: float,
                  reference: str | None = None) -> dict[str, dict[int, float]]:
    """Fastest call, in milliseconds, of each session at each batch size in ``feeds``: rounds of
    one call each, for ``seconds`` per batch size (at least :data:`MIN_ROUNDS` rounds)."""
    out: dict[str, dict[int, float]] = {name: {} for name in sessions}
    clock = time.perf_counter
    for batch, feed in feeds.items():
        runs = {name: s.session.run for name, s in sessions.items()}
        for run in runs.values():
            for _ in range(3):  # warm-up: first calls allocate and pick kernels
                run(None, feed)
        best = {name: float("inf") for name in runs}
        active = list(runs.items())
        started = clock()
        rounds = 0
        while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or clock() - started < seconds):
            for name, run in active:
                t0 = clock()
                run(None, feed)
                elapsed = clock() - t0
                if elapsed < best[name]:
                    best[name] = elapsed
            rounds += 1
            if rounds == GIVE_UP_ROUNDS and reference in best:
                active = [(n, r) for n, r in active if n == reference or best[n] <= GIVE_UP_RATIO * best[reference]]
        for name in runs:
            out[name][batch] = best[name] * 1e3
    return out


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` samples from ``x``, repeated when it holds fewer."""
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(x.dtype))


def quality_check(version, dataset, repo, session):
    """The check the model's task gives compressors (``session``: the parent's, for its input names)."""
    from dlkit import get_registry

    task = get_registry().task_of(version.meta)
    if task is None or task.quality is None:
        raise DlkitError(f"model {version.ref}: its task {version.meta.get('task')!r} has no quality check for "
                         f"compressors")
    return task.quality(version, dataset, repo, session)
