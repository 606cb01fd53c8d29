"""The transport-neutral data plane: what the server does, without HTTP or gRPC types.

REST (``app``) and gRPC (``grpc_service``) route every call here, so both transports share one
validated inference path, one dynamic batcher per model version, one set of metrics and one
readiness state. Errors are :class:`~dlkit.serve.protocol.ProtocolError` carrying an HTTP-like
status that each transport maps to its own codes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .. import __version__
from ..errors import DlkitError
from ..store.repository import ModelRepository
from .batcher import DynamicBatcher, QueueFull
from .control import ModelControl
from .metrics import Metrics
from .model_set import ModelSet, ServedModel, load_models
from .pbtxt import MAX_INSTANCES
from .protocol import InferRequest, ProtocolError
from .settings import ServeSettings

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository", "classification"]
RETIRE_POLL_SECONDS = 0.01
T = TypeVar("T")


class Overloaded(ProtocolError):
    """The model's queue is full: retry later (HTTP 503, gRPC UNAVAILABLE)."""

    def __init__(self, message: str):
        super().__init__(message, 503)


class DataPlane:
    """Live, ready, metadata, config and inference over the models of one repository.

    Models load in the constructor, so errors surface before a port is bound; :meth:`start`
    (on the serving event loop) starts the batchers and :meth:`stop` drains them.
    """

    def __init__(self, settings: ServeSettings, repo: ModelRepository | None = None):
        self.settings = settings
        self.repo = repo if repo is not None else ModelRepository(settings.repo)
        self.models = ModelSet(load_models(self.repo, list(settings.models) if settings.models else None,
                                           settings.provider, settings.threads, settings.max_batch_size,
                                           allow_empty=settings.model_control_mode != "none",
                                           instances=settings.instances))
        self.metrics = Metrics()
        # Threads start on demand (at most one per batch running at once, i.e. the instances of the
        # models loaded), so the cap only has to leave room for every instance: a lower one would
        # queue an instance's batch behind another's.
        self.executor = ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 4 * MAX_INSTANCES),
                                           thread_name_prefix="dlkit-infer")
        for model in self.models:
            self._attach(model)
        self.control = ModelControl(self)
        self._ready = False
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every batcher on the running event loop; the server is ready afterwards."""
        for model in self.models:
            model.batcher.start()
        self.control.start()
        self._started = self._ready = True

    async def stop(self) -> None:
        """Not ready any more; finish what is queued, then release the worker threads."""
        self._ready = False
        await self.control.stop()
        for model in self.models:
            await model.batcher.close()
        self.executor.shutdown(wait=True)

    def add_model(self, model: ServedModel) -> None:
        """Give a model opened after start-up its batcher and metrics (the caller then serves it)."""
        self._attach(model)
        if self._started:
            model.batcher.start()

    async def retire(self, model: ServedModel) -> None:
        """Once no longer served: let its in-flight requests finish, then stop its batcher."""
        while model.active:
            await asyncio.sleep(RETIRE_POLL_SECONDS)
        await model.batcher.close()
        self.metrics.queue_depth.pop((model.name, model.version), None)

    def _attach(self, model: ServedModel) -> None:
        """Give ``model`` its metrics and its batcher."""
        s = self.settings
        stats = self.metrics.model(model.name, model.version, model.max_batch_size or 1)

        def on_batch(batch):
            stats.executed(batch.rows, batch.seconds)

        model.metrics = stats
        model.batcher = DynamicBatcher(
            model.runners(), self.executor, max_batch_size=model.max_batch_size or 1,
            max_queue_delay_ms=s.max_queue_delay_ms, max_queue_size=s.max_queue_size,
            batching=s.batching and model.max_batch_size is not None, on_batch=on_batch)
        self.metrics.queue_depth[(model.name, model.version)] = lambda: model.batcher.depth

    # -- health and metadata -----------------------------------------------------------------------
    def live(self) -> bool:
        """The process answers."""
        return True

    def ready(self) -> bool:
        """Every model loaded and the server not stopping."""
        return self._ready

    def server_metadata(self) -> dict:
        """The v2 server metadata."""
        return {"name": "dlkit", "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served version (the latest when None), or a 404 ProtocolError."""
        return self.models.get(name, version)

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        """The v2 model metadata: every served version when none is named."""
        model = self.models.get(name, version)
        versions = self.models.versions(name) if version is None else [model.version]
        return model.metadata(versions)

    def model_ready(self, name: str, version: str | None = None) -> dict:
        """``{"name", "ready": True}``; 404 for an unknown model, 503 while not ready."""
        model = self.models.get(name, version)
        if not self._ready:
            raise ProtocolError(f"model {name!r} is not ready", 503)
        return {"name": model.name, "ready": True}

    def model_config(self, name: str, version: str | None = None) -> dict:
        """The model configuration in Triton's JSON form."""
        s = self.settings
        return self.models.get(name, version).config(s.max_queue_delay_ms, s.batching)

    # -- inference ---------------------------------------------------------------------------------
    async def infer(self, model: ServedModel, receive: Callable[[], Awaitable[InferRequest]],
                    encode: Callable[[InferRequest, dict], T]) -> T:
        """Receive a validated request for ``model``, run it through the batcher, encode the answer.

        ``receive`` reads and parses the transport's request (while it runs, the batcher knows a
        request is on its way and may wait for it); ``encode`` turns the outputs into the
        transport's response. Failures are ProtocolErrors, counted per status.
        """
        started = time.perf_counter()
        stats = model.metrics
        stats.requests += 1
        model.active += 1  # before the first await: an unload waits for this request
        try:
            with model.batcher.arriving():
                request = await receive()
            outputs, queued = await model.batcher.infer(request.inputs, request.batch)
            response = encode(request, model.classify(request.outputs, outputs))
        except ProtocolError as exc:
            stats.failed(exc.status, time.perf_counter() - started)
            raise
        except QueueFull as exc:
            stats.failed(503, time.perf_counter() - started)
            raise Overloaded(f"model {model.name!r} is overloaded: {exc}; retry later") from None
        except DlkitError as exc:  # the runtime failed on input that passed validation
            stats.failed(500, time.perf_counter() - started)
            raise ProtocolError(str(exc), 500) from None
        finally:
            model.active -= 1
        stats.succeeded(request.batch, time.perf_counter() - started, queued)
        return response

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics extension: every served version, a model's, or one version's."""
        if not name:
            chosen = list(self.models)
        elif version:
            chosen = [self.models.get(name, version)]
        else:
            self.models.get(name)  # 404 for an unknown model
            chosen = [self.models.get(name, str(v)) for v in self.models.versions(name)]
        return {"model_stats": [m.metrics.triton_statistics(m.name, m.version) for m in chosen]}
