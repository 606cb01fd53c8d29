"""Dynamic batching: concurrent requests for one model version become one runtime call.

Policy. The batcher runs as soon as the runtime is free and takes everything queued, up to
``max_batch_size`` rows; requests that arrive while a batch runs form the next batch, so under
load batches grow by themselves. It waits for batch-mates (at most ``max_queue_delay_ms``) only
while requests for this model are known to be on their way (their body is still being
received), so a lone client never pays the delay; and only for bodies that began arriving less
than ``max_queue_delay_ms`` ago, so a stalled or trickling upload holds batches for one delay
at most in all, not every batch until its body timeout. Queued requests whose tensors differ beyond
the batch dimension run as separate groups. If a batch fails, its requests are retried one by
one so that a bad request fails alone. The queue is bounded: when full, :class:`QueueFull` at
once (the server answers 503) rather than unbounded latency.

The runtime call runs in a worker thread (onnxruntime releases the GIL), off the event loop.
With several instances (copies of the model's session, ``--instances``), up to that many batches
run at once, each handed to a free instance; the next batch forms while they run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..errors import DlkitError

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


class QueueFull(DlkitError):
    """The model's queue holds ``max_queue_size`` requests already."""


@dataclass
class _Item:
    feeds: Feeds
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    queue_seconds: float = 0.0


@dataclass
class BatchStats:
    """What one runtime call did: passed to the ``on_batch`` callback."""

    rows: int
    requests: int
    seconds: float


class DynamicBatcher:
    """Coalesces concurrent requests for one model version into batched runtime calls.

    ``run`` takes and returns ``{name: array}`` with the batch along the first axis; a sequence
    of such functions is one per instance, and a batch goes to whichever is free.
    ``batching=False`` runs each request alone (still queued, still off the event loop).
    """

    def __init__(self, run: RunFn | Sequence[RunFn], executor: Executor, *, max_batch_size: int = 64,
                 max_queue_delay_ms: float = 2.0, max_queue_size: int = 1024, batching: bool = True,
                 on_batch: Callable[[BatchStats], None] | None = None):
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_ms < 0:
            raise ValueError("max_batch_size and max_queue_size must be >= 1, max_queue_delay_ms >= 0")
        self.runners = list(run) if isinstance(run, Sequence) else [run]
        if not self.runners:
            raise ValueError("at least one instance is needed")
        self.run = self.runners[0]
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.batching = batching
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._arrivals: dict[int, float] = {}  # bodies on their way: key -> when they began (monotonic)
        self._next_arrival = 0
        self._waiting_for_arrivals = False
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._free = list(reversed(self.runners))  # instances not running a batch (pop() takes the first)
        self._running: set[asyncio.Task] = set()

    @property
    def instances(self) -> int:
        """How many copies of the model can run a batch at once."""
        return len(self.runners)

    @property
    def _busy(self) -> bool:
        return bool(self._running)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        while self._task is not None and not self._task.done() and (self._queue or self._running):
            self._changed.set()
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def depth(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    # -- submitting ----------------------------------------------------------------------------
    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request whose body is still being received (the batcher may wait for it)."""
        key = self._next_arrival = self._next_arrival + 1
        self._arrivals[key] = time.monotonic()
        try:
            yield
        finally:
            del self._arrivals[key]
            if self._waiting_for_arrivals:
                self._changed.set()

    async def infer(self, feeds: Feeds, rows: int) -> tuple[Feeds, float]:
        """Queue one request of ``rows`` rows; returns its outputs and its seconds in the queue."""
        if self._task is None:
            raise DlkitError("the batcher is not running")
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull(f"the queue holds {len(self._queue)} requests (--max-queue-size {self.max_queue_size})")
        key = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))
        item = _Item(feeds, rows, key, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._changed.set()
        outputs = await item.future
        return outputs, item.queue_seconds

    # -- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue or not self._free:  # nothing to run, or every instance busy
                self._changed.clear()
                await self._changed.wait()
                continue
            # Woken by the first enqueue, this task runs after the handlers that were ready at
            # the same time, so they have queued already: no need to yield once more here.
            if self.batching:
                await self._wait_for_arrivals(loop)
            batch = self._take()
            if not batch:
                continue
            now = time.perf_counter()
            for item in batch:
                item.queue_seconds = now - item.enqueued
            task = loop.create_task(self._execute(loop, self._free.pop(), batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, loop, run: RunFn, batch: list[_Item]) -> None:
        """Run ``batch`` on the instance ``run`` in a worker thread, answer its requests, free it."""
        try:
            started = time.perf_counter()
            results = await loop.run_in_executor(self.executor, self._run_batch, run, batch)
            seconds = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - the executor failed (shut down): fail the batch, keep going
            results, seconds = [exc] * len(batch), 0.0
        finally:
            self._free.append(run)
            self._changed.set()  # the loop may hand the next batch to this instance
        for item, result in zip(batch, results):
            if item.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(BatchStats(sum(i.rows for i in batch), len(batch), seconds))

    async def _wait_for_arrivals(self, loop) -> None:
        deadline = time.monotonic() + self.max_delay
        self._waiting_for_arrivals = True
        try:
            while self._arrivals and self._queued_rows() < self.max_batch_size:
                # Until the delay is spent, or the youngest arrival has had a whole delay to arrive.
                until = min(deadline, max(self._arrivals.values()) + self.max_delay)
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
                    return
        finally:
            self._waiting_for_arrivals = False

    def _queued_rows(self) -> int:
        return sum(item.rows for item in self._queue)

    def _take(self) -> list[_Item]:
        """Up to max_batch_size rows from the queue's head (one request when batching is off)."""
        batch: list[_Item] = []
        rows = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # cancelled while queued
                self._queue.popleft()
                continue
            if batch and (not self.batching or rows + item.rows > self.max_batch_size):
                break
            self._queue.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    # -- in the worker thread ------------------------------------------------------------------------
    def _run_batch(self, run: RunFn, batch: list[_Item]) -> list[Feeds | BaseException]:
        """Each item's outputs (or its error); groups items whose tensors can be concatenated."""
        results: list[Feeds | BaseException | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(batch):
            groups.setdefault(item.key, []).append(index)
        for indices in groups.values():
            items = [batch[i] for i in indices]
            if len(items) == 1:
                outs = [self._run_one(run, items[0])]
            else:
                try:
                    outs = self._run_group(run, items)
                except Exception:  # noqa: BLE001 - any error: retry each request alone
                    # One bad request must not fail its batch-mates: run each alone.
                    outs = [self._run_one(run, item) for item in items]
            for i, out in zip(indices, outs):
                results[i] = out
        return results

    @staticmethod
    def _run_one(run: RunFn, item: _Item) -> Feeds | BaseException:
        try:
            return run(item.feeds)
        except Exception as exc:  # noqa: BLE001 - handed to that request's caller as its answer
            return exc

    @staticmethod
    def _run_group(run: RunFn, items: list[_Item]) -> list[Feeds]:
        names = items[0].feeds.keys()
        feeds = {name: np.concatenate([item.feeds[name] for item in items]) for name in names}
        outputs = run(feeds)
        split = []
        offset = 0
        for item in items:
            split.append({name: array[offset:offset + item.rows] for name, array in outputs.items()})
            offset += item.rows
        return split
