"""Prometheus metrics in the text exposition format, written by hand.

The server is one process with a handful of counters and histograms, so the exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/) is a few lines of code and one
dependency fewer than prometheus_client; observing costs a dict look-up and a bisect.
Labels are model names and versions the server loaded itself, never strings from a client.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable

# Latency buckets in seconds: 0.1 ms to 10 s.
SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative buckets, a sum and a count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = []
        total = 0
        sep = "," if labels else ""
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} {total}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {_number(self.sum)}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class ModelMetrics:
    """The series of one model version."""

    def __init__(self, name: str, version: int, max_batch_size: int):
        self.labels = f'model="{_escape(name)}",version="{version}"'
        self.requests = 0
        self.failures: dict[int, int] = {}
        self.request_seconds = Histogram(SECONDS)
        self.queue_seconds = Histogram(SECONDS)
        self.compute_seconds = Histogram(SECONDS)
        sizes = []
        size = 1
        while size < max_batch_size:
            sizes.append(size)
            size *= 2
        self.batch_size = Histogram(tuple(sizes + [max_batch_size]))
        # Triton's statistics extension: durations per phase. Inputs and outputs are numpy arrays
        # handed to and taken from onnxruntime in place, so compute_input/output stay zero.
        self.phases = {k: Duration() for k in ("success", "fail", "queue", "compute_input", "compute_infer",
                                               "compute_output")}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.by_batch_size: dict[int, Duration] = {}

    def failed(self, status: int, seconds: float = 0.0) -> None:
        self.failures[status] = self.failures.get(status, 0) + 1
        self.phases["fail"].add(seconds)

    def succeeded(self, rows: int, seconds: float, queued: float) -> None:
        """One answered request of ``rows`` rows (Triton's statistics count rows as inferences)."""
        self.request_seconds.observe(seconds)
        self.queue_seconds.observe(queued)
        self.phases["success"].add(seconds)
        self.phases["queue"].add(queued)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def executed(self, rows: int, seconds: float) -> None:
        """One runtime call (a batch) of ``rows`` rows."""
        self.batch_size.observe(rows)
        self.compute_seconds.observe(seconds)
        self.phases["compute_infer"].add(seconds)
        self.execution_count += 1
        self.by_batch_size.setdefault(rows, Duration()).add(seconds)

    def triton_statistics(self, name: str, version: int) -> dict:
        """This version's statistics in the form of Triton's statistics extension."""
        zero = Duration().as_dict()
        return {"name": name, "version": str(version), "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: d.as_dict() for k, d in self.phases.items()},
                "batch_stats": [{"batch_size": rows, "compute_input": zero, "compute_infer": d.as_dict(),
                                 "compute_output": zero} for rows, d in sorted(self.by_batch_size.items())]}


class Duration:
    """A count and cumulative nanoseconds (Triton's StatisticDuration)."""

    __slots__ = ("count", "ns")

    def __init__(self):
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class Metrics:
    """Every series the server exposes at ``/metrics``."""

    def __init__(self):
        self.models: dict[tuple[str, int], ModelMetrics] = {}
        self.responses: dict[int, int] = {}
        self.in_flight = 0
        self.queue_depth: dict[tuple[str, int], Callable[[], int]] = {}

    def model(self, name: str, version: int, max_batch_size: int = 1,
              queue_depth: Callable[[], int] | None = None) -> ModelMetrics:
        """The series of ``name`` version ``version`` (created on first use)."""
        key = (name, version)
        if key not in self.models:
            self.models[key] = ModelMetrics(name, version, max_batch_size)
        if queue_depth is not None:
            self.queue_depth[key] = queue_depth
        return self.models[key]

    def render(self) -> str:
        """The exposition text."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, rows: list[str]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(rows)

        models = list(self.models.values())
        family("dlkit_inference_requests_total", "counter", "Inference requests received, per model version.",
               [f"dlkit_inference_requests_total{{{m.labels}}} {m.requests}" for m in models])
        family("dlkit_inference_failures_total", "counter", "Inference requests that failed, by HTTP status.",
               [f'dlkit_inference_failures_total{{{m.labels},code="{code}"}} {n}'
                for m in models for code, n in sorted(m.failures.items())])
        for attr, name, help_text in (
            ("request_seconds", "dlkit_inference_request_duration_seconds",
             "Time from receiving a successful inference request to its response, in seconds."),
            ("queue_seconds", "dlkit_inference_queue_duration_seconds",
             "Time a request waited in the batching queue, in seconds."),
            ("compute_seconds", "dlkit_inference_compute_duration_seconds",
             "Time of one runtime call (one batch), in seconds."),
            ("batch_size", "dlkit_inference_batch_size", "Rows per runtime call."),
        ):
            rows = []
            for m in models:
                rows.extend(getattr(m, attr).lines(name, m.labels))
            family(name, "histogram", help_text, rows)
        family("dlkit_inference_queue_depth", "gauge", "Requests waiting in the batching queue.",
               [f"dlkit_inference_queue_depth{{{self.models[key].labels}}} {depth()}"
                for key, depth in self.queue_depth.items()])
        family("dlkit_http_responses_total", "counter", "HTTP responses, by status code.",
               [f'dlkit_http_responses_total{{code="{code}"}} {n}' for code, n in sorted(self.responses.items())])
        family("dlkit_http_requests_in_flight", "gauge", "HTTP requests being handled now.",
               [f"dlkit_http_requests_in_flight {self.in_flight}"])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
