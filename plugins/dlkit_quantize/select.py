"""Choosing among measured candidates: timing that reports its own noise, and a choice that never
rests on a difference smaller than that noise.

Timing (:func:`time_rounds`): the parent and every candidate take turns call after call, in
rounds; each round keeps each model's fastest of a few calls (the sample other processes disturb
least). A model's latency is the median of its round minimums and its **spread** the half
interquartile range of them, relative to the median: what one more measurement would move.
Rounds go on until the ordering of the models has not changed for :data:`STABLE_ROUNDS` rounds
(and at least :data:`MIN_ROUNDS`), or the time is up; the report says which.

Selection (:func:`select`): the objective is one number per candidate, a ratio to the parent
(``latency``: the smallest batch size; ``throughput``: the largest; ``served``: the geometric
mean over every batch size timed, the default; ``size``: bytes on disk). Its **noise** is the
standard error of that estimate: a median of N round minimums with spread h moves by about
1.86 h / sqrt(N) (the median's standard error, 1.253 sigma / sqrt(N), with sigma = 2h / 1.349
from the interquartile range). Among the candidates within the tolerance, those within two
combined standard errors of the best one are a tie, which the smaller file wins, then the one
whose outputs are closest to the parent's. The parent's own noise is left out: every score is
divided by the same parent median, so it cancels when two candidates are compared. (Summing the
raw spreads instead, as an earlier version did, counted candidates 1.2-1.7x slower as ties on a
busy machine, and the smaller, slower file won.)
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

OBJECTIVES = ("served", "latency", "throughput", "size")
MIN_ROUNDS = 7
STABLE_ROUNDS = 5
MAX_ROUNDS = 5000
CALLS_PER_ROUND = 3
GIVE_UP_RATIO = 10.0  # a candidate this much slower than the parent after MIN_ROUNDS stops being timed


def time_rounds(sessions: dict[str, Any], feeds: dict[int, dict], seconds: float,
                reference: str | None = None) -> dict[str, dict[int, dict]]:
    """``{name: {batch: {"ms", "spread", "rounds", "stable"}}}``: interleaved rounds per batch size,
    for at most ``seconds`` per batch size (at least :data:`MIN_ROUNDS` rounds)."""
    out: dict[str, dict[int, dict]] = {name: {} for name in sessions}
    for batch, feed in feeds.items():
        runs = {name: s.session.run for name, s in sessions.items()}
        for run in runs.values():
            for _ in range(2):  # warm-up: first calls allocate and pick kernels
                run(None, feed)
        samples, stable = _rounds(runs, feed, seconds, reference)
        for name, values in samples.items():
            v = np.asarray(values)
            median = float(np.median(v))
            q1, q3 = np.percentile(v, [25, 75])
            out[name][batch] = {"ms": median * 1e3, "spread": float((q3 - q1) / 2 / median) if median else 0.0,
                                "rounds": len(v), "stable": stable}
    return out


def _rounds(runs: dict, feed: dict, seconds: float, reference: str | None) -> tuple[dict[str, list], bool]:
    clock = time.perf_counter
    samples: dict[str, list] = {name: [] for name in runs}
    active = list(runs.items())
    started, order, unchanged = clock(), None, 0
    for rounds in range(1, MAX_ROUNDS + 1):
        for name, run in active:
            best = math.inf
            for _ in range(CALLS_PER_ROUND):
                t0 = clock()
                run(None, feed)
                best = min(best, clock() - t0)
            samples[name].append(best)
        if rounds == MIN_ROUNDS and reference in samples:
            ref = float(np.median(samples[reference]))
            active = [(n, r) for n, r in active if n == reference or np.median(samples[n]) <= GIVE_UP_RATIO * ref]
        now = tuple(sorted((n for n, _ in active), key=lambda n: float(np.median(samples[n]))))
        unchanged = unchanged + 1 if now == order else 0
        order = now
        if rounds >= MIN_ROUNDS and (unchanged >= STABLE_ROUNDS or clock() - started > seconds):
            return samples, unchanged >= STABLE_ROUNDS
    return samples, False


MEDIAN_SE = 1.253 * 2 / 1.349  # a median's standard error per unit of half-IQR spread, times sqrt(N)
TIE_SE = 2.0  # standard errors within which two scores are a tie (about 95%)


def score(row: dict, objective: str, batch_sizes: list[int]) -> tuple[float, float]:
    """(the row's objective as a ratio to the parent, the relative standard error of it)."""
    if objective == "size":
        return row["size_ratio"], 0.0
    batches = {"latency": [min(batch_sizes)], "throughput": [max(batch_sizes)]}.get(objective, batch_sizes)
    ratios = [row[f"latency_b{b}_ratio"] for b in batches]
    errors = [MEDIAN_SE * row[f"latency_b{b}_spread"] / math.sqrt(max(row[f"latency_b{b}_rounds"], 1))
              for b in batches]
    # the geometric mean of k independent ratios: relative errors add in quadrature, divided by k
    return float(np.exp(np.mean(np.log(ratios)))), math.sqrt(sum(e * e for e in errors)) / len(errors)


def select(rows: list[dict], objective: str, batch_sizes: list[int]) -> dict | None:
    """Mark and return the chosen row among the passing ones (see the module docstring); each row
    gets its ``score``, ``noise`` (standard error) and ``tie`` (within :data:`TIE_SE` combined
    standard errors of the best)."""
    passing = [r for r in rows if r.get("passed")]
    if not passing:
        return None
    for r in passing:
        r["score"], r["noise"] = score(r, objective, batch_sizes)
    best = min(passing, key=lambda r: r["score"])
    for r in passing:
        r["tie"] = r["score"] - best["score"] <= tie_margin(r, best) + 1e-12
    near = [r for r in passing if r["tie"]]
    chosen = min(near, key=lambda r: (r["size_bytes"], r["output_difference"], r["candidate"]))
    chosen["chosen"] = True
    return chosen


def tie_margin(row: dict, best: dict) -> float:
    """How far above the best score ``row``'s may be and still be a tie (absolute, in score units)."""
    return TIE_SE * math.hypot(row["noise"], best["noise"]) * best["score"]
