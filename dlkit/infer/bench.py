"""``dlkit bench``: latency and throughput of torch and onnxruntime, side by side in one process.

Both runtimes get the same inputs and the same number of intra-op threads (``threads``, else
``$DLKIT_THREADS``, else the CPUs this process may use), and the counts each runtime really ran
with are read back and reported: a speed-up between runtimes on different numbers of cores
would measure the cores, so none is given then. torch runs under ``torch.inference_mode()`` (no autograd
bookkeeping: the fair eager baseline), and they take turns in short rounds so that a noisy
neighbour on a shared machine slows both alike. torch is only imported when it is benchmarked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dlkit.errors import InputError
from dlkit.store.repository import ModelVersion

RUNTIMES = ("torch", "onnx")
ROUNDS = 5  # turns each runtime takes per batch size
WARMUP_S = 0.2  # per runtime and batch size, before any timing (at least 3 calls)


def bench(version: ModelVersion, batch_sizes=(1, 64), runtimes=RUNTIMES, seconds: float = 2.0,
          provider: str = "auto", *, threads: int | None = None, optimization: str = "all",
          strict: bool = False, shapes: dict[str, tuple] | None = None) -> dict:
    """Warm up, then time each runtime at each batch size for ``seconds``; returns the report.

    ``shapes`` (:func:`parse_shapes`) sizes the inputs a graph leaves open, onnxruntime only.

    Per runtime and batch size: p50/p90/p99 latency (ms), mean, calls and throughput
    (samples/s); per batch size with both runtimes, ``speedup`` = torch p50 / onnx p50.
    """
    runtimes = list(dict.fromkeys(runtimes))
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise InputError(f"--runtimes: unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)}"
                         if unknown else "--runtimes: give at least one runtime")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1:
        raise InputError(f"--batch-sizes must be positive integers, got {batch_sizes}")
    if not seconds > 0:
        raise InputError(f"--seconds must be positive, got {seconds}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    if "onnx" in runtimes and not version.has_onnx():
        raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
    if shapes and "torch" in runtimes:
        raise InputError("--shape sizes onnxruntime's inputs: give it with --runtimes onnx")
    from dlkit.training.threads import resolve_threads

    threads = resolve_threads(threads)
    runners: dict[str, Any] = {}
    providers = session = graph = None
    if "onnx" in runtimes:
        from dlkit.infer.session import Session

        session = Session(version.onnx_path, provider, strict=strict, threads=threads, optimization=optimization)
        runners["onnx"] = session_runner(session)
        providers = session.providers
    restore = None
    if "torch" in runtimes:
        import torch

        from dlkit.export.graph import export_graph
        from dlkit.export.parity import torch_runner

        graph = export_graph(version)
        runners["torch"] = torch_runner(graph)  # runs under torch.inference_mode()
        # The same intra-op thread count as the onnxruntime session: a ratio between runtimes
        # on different numbers of cores would measure the cores.
        restore = torch.get_num_threads()
        torch.set_num_threads(threads)
    counts = thread_counts(session, runtimes)
    try:
        results = []
        for b in sizes:
            feeds = bench_inputs(version.meta, b, session=session, graph=graph, shapes=shapes)
            results += measure({r: runners[r] for r in runtimes}, feeds, b, seconds)
    finally:
        if restore is not None:
            import torch

            torch.set_num_threads(restore)
    speedups, note = compare(results, counts)
    same = len(set(counts.values())) == 1
    return {"model": version.name, "version": version.version, "threads": threads if same else None,
            "thread_counts": counts, "providers": providers, "seconds": seconds, "results": results,
            "speedups": speedups, "speedup_note": note}


def thread_counts(session, runtimes) -> dict[str, int]:
    """The intra-op threads each runtime will really use, read back from the runtime itself."""
    counts = {}
    if "torch" in runtimes:
        import torch

        counts["torch"] = torch.get_num_threads()
    if "onnx" in runtimes:
        counts["onnx"] = int(session.session.get_session_options().intra_op_num_threads)
    return counts


def compare(results: list[dict], counts: dict[str, int]) -> tuple[list[dict], str | None]:
    """Per batch size, torch p50 / onnx p50; none (and why) unless both ran on the same thread count."""
    if not set(RUNTIMES) <= set(counts):
        return [], None
    if counts["torch"] != counts["onnx"]:
        return [], (f"no speed-up: torch ran on {counts['torch']} threads and onnxruntime on "
                    f"{counts['onnx']}; the ratio would measure the cores")
    speedups = []
    for b in dict.fromkeys(r["batch_size"] for r in results):
        t, o = (next(r for r in results if r["runtime"] == k and r["batch_size"] == b) for k in RUNTIMES)
        speedups.append({"batch_size": b, "speedup": t["p50_ms"] / o["p50_ms"],
                         "throughput_ratio": o["throughput"] / t["throughput"]})
    return speedups, None


def session_runner(session) -> Callable[[dict], Any]:
    names = [o.name for o in session.outputs]
    return lambda feeds: session.session.run(names, feeds)  # skip the wrapper's dict: timed code only


def bench_inputs(meta: dict, batch: int, *, session=None, graph=None,
                 shapes: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """The same random inputs for every runtime.

    Graphs fed the data set's samples: uniform inside the input spec's range. Other graphs: the architecture's own
    sampler (``OnnxGraph.random_inputs``) when torch is loaded anyway, else drawn from the ONNX
    inputs (:func:`graph_feeds`), sized by ``shapes`` (``--shape``) where the graph leaves a size open.
    """
    from dlkit.data.random_inputs import random_in_range, takes_data

    rng = np.random.default_rng(batch)
    spec = meta.get("input_spec") or {}
    if shapes and session is not None:  # the user's sizes win over what a data set would give
        return graph_feeds(session.inputs, batch, shapes, rng)
    inputs = ([list(i.shape) for i in session.inputs] if session is not None
              else [list(t.shape) for t in graph.example_inputs.values()])
    if takes_data(spec, inputs):
        name = session.inputs[0].name if session is not None else next(iter(graph.example_inputs))
        return {name: random_in_range(meta["input_spec"], batch, rng)}
    if graph is not None:
        return graph.random_inputs(batch, seed=batch)
    return graph_feeds(session.inputs, batch, shapes or {}, rng)


BATCH = "B"  # in a --shape, the dimension that takes each --batch-sizes value


def parse_shapes(values: list[str] | tuple[str, ...]) -> dict[str, tuple]:
    """``--shape NAME=DIMS`` values as {name: dims}: DIMS like ``Bx16000`` or ``2,B,128``, where
    ``B`` is the batch size being timed (ints elsewhere; a scalar input is ``NAME=``)."""
    shapes: dict[str, tuple] = {}
    for value in values:
        name, sep, dims = value.partition("=")
        if not sep or not name:
            raise InputError(f"--shape {value!r}: give NAME=DIMS, e.g. input=Bx3x224x224 (B: the batch size)")
        parsed: list = []
        for token in filter(None, dims.replace(",", "x").split("x")):
            if token.upper() == BATCH:
                parsed.append(BATCH)
            elif token.isdigit() and int(token) > 0:
                parsed.append(int(token))
            else:
                raise InputError(f"--shape {value!r}: {token!r} is not a positive size or B (the batch size)")
        shapes[name] = tuple(parsed)
    return shapes


def graph_feeds(inputs, batch: int, shapes: dict[str, tuple], rng) -> dict[str, np.ndarray]:
    """Random feeds for any graph's inputs: standard normal floats, zero integers (class 0 of a
    conditional generator, a valid index, a neutral flag). The first dimension takes the batch
    size when the graph leaves it open; every other open size must come from ``shapes``."""
    names = [info.name for info in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputError(f"--shape {unknown[0]}: the graph has no such input (it has: {', '.join(names)})")
    feeds, batched = {}, False
    for info in inputs:
        declared = list(info.shape)
        if info.name in shapes:
            batched = batched or BATCH in shapes[info.name]
            given = [batch if d == BATCH else d for d in shapes[info.name]]
            if len(given) != len(declared) or any(d is not None and d != g for d, g in zip(declared, given)):
                raise InputError(f"--shape {info.name}={'x'.join(map(str, shapes[info.name])) or '(scalar)'}: "
                                 f"the graph declares {info.name!r} as {_dims(declared)}")
            shape = given
        else:
            batched = batched or (bool(declared) and declared[0] in (None, batch))  # a fixed batch at its size
            shape = [batch if i == 0 and d is None else d for i, d in enumerate(declared)]
            if None in shape:
                raise InputError(f"bench: graph input {info.name!r} is {_dims(declared)} with an open size: "
                                 f"give it with --shape {info.name}={_dims(declared, 'x')}")
        kind = np.dtype(info.dtype).kind
        if kind not in "fiub":
            raise InputError(f"bench: graph input {info.name!r} holds {info.dtype}; bench times numeric inputs")
        feeds[info.name] = (rng.standard_normal(shape).astype(info.dtype) if kind == "f"
                            else np.zeros(shape, dtype=info.dtype))
    if not batched and batch != 1:  # the same fixed-size call at every batch size would be mislabelled
        fixed = sorted({info.shape[0] for info in inputs if info.shape and info.shape[0] is not None})
        raise InputError(f"bench: no input of this graph takes batch size {batch} (their sizes are fixed): give "
                         f"--batch-sizes {','.join(map(str, fixed)) or 1}, or a batch dimension B with --shape")
    return feeds


def _dims(shape: list, sep: str = "") -> str:
    """[None, 3] as ``[?, 3]``; with ``sep``, a --shape template such as ``Bx3`` (B first, ? for the rest)."""
    if not sep:
        return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    return sep.join(BATCH if i == 0 and d is None else "?" if d is None else str(d) for i, d in enumerate(shape))


def measure(runners: dict[str, Callable[[dict], Any]], feeds: dict, batch: int, seconds: float) -> list[dict]:
    """Time every runner on ``feeds``: warm-up, then ROUNDS alternating turns of seconds/ROUNDS."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        deadline = time.perf_counter() + WARMUP_S
        for i in range(1000):
            run(feeds)
            if i >= 2 and time.perf_counter() > deadline:
                break
    turn = seconds / ROUNDS
    for _ in range(ROUNDS):
        for name, run in runners.items():
            laps = times[name]
            end = time.perf_counter() + turn
            while True:
                t0 = time.perf_counter()
                run(feeds)
                t1 = time.perf_counter()
                laps.append(t1 - t0)
                if t1 >= end:
                    break
    out = []
    for name, laps in times.items():
        ms = np.asarray(laps) * 1000.0
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        out.append({"runtime": name, "batch_size": batch, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
                    "mean_ms": float(ms.mean()), "calls": len(laps),
                    "throughput": batch * len(laps) / (ms.sum() / 1000.0)})
    return out
