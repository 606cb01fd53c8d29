"""The HTTP app: the Open Inference Protocol (KServe v2) over the repository's ONNX models.

``create_app`` loads the models, builds one dynamic batcher per version and returns a FastAPI
app; ``dlkit.serve.server.serve`` runs it under uvicorn. Infer bodies are parsed by
``protocol`` (not by FastAPI's pydantic layer) because the binary extension mixes JSON and raw
bytes in one body and validation must happen before any tensor is allocated.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .. import __version__
from ..errors import DlkitError, InputError
from ..store.repository import ModelRepository
from .batcher import DynamicBatcher, QueueFull
from .metrics import CONTENT_TYPE, Metrics
from .models import ModelSet, ServedModel, load_models
from .protocol import ProtocolError, encode_infer_response, parse_infer_request

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_QUEUE_SIZE = 1024
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
access_log = logging.getLogger("dlkit.access")

# The infer body as an OpenAPI schema, for readers and schema-driven fuzzers; the handler
# parses the body itself (see the module docstring).
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                            "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
    "parameters": {"type": "object"}, "data": {"type": "array"}}}
INFER_OPENAPI = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}}}}}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The protocol's error body: ``{"error": "..."}``."""
    return Response(json.dumps({"error": message}), status, headers, media_type="application/json")


def json_response(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status, media_type="application/json")


def create_app(repo: ModelRepository | str | os.PathLike, models: list[str] | None = None,
               provider: str = "auto", max_batch_size: int = 64, max_queue_delay_ms: float = 2.0,
               max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, token: str | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, batching: bool = True,
               threads: int | None = 1, log_access: bool = True) -> FastAPI:
    """A FastAPI app serving ``repo``'s exported models (or ``models``: NAME or NAME:V).

    ``batching=False`` runs every request alone; ``token`` requires ``Authorization: Bearer``
    on every endpoint but health. Models load here, so errors surface before a port is bound.
    ``threads`` is onnxruntime's intra-op thread count per model (None: onnxruntime's default,
    a spinning pool per session that competes with the event loop for the cores; the server's
    parallelism comes from batching and from running several models at once).
    """
    if max_batch_size < 1 or max_queue_size < 1 or max_request_bytes < 1 or max_queue_delay_ms < 0:
        raise InputError("max batch size, queue size and request bytes must be >= 1, the queue delay >= 0")
    if token is not None and not token.strip():
        raise InputError("--token must not be empty")
    repo = repo if isinstance(repo, ModelRepository) else ModelRepository(Path(repo))
    served = ModelSet(load_models(repo, models, provider, threads, max_batch_size))
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=min(len(list(served)), os.cpu_count() or 1),
                                  thread_name_prefix="dlkit-infer")
    for model in served:
        _attach(model, metrics, executor, max_batch_size, max_queue_delay_ms, max_queue_size, batching)
    ready = {"value": False}

    @asynccontextmanager
    async def lifespan(app):
        for model in served:
            model.batcher.start()
        ready["value"] = True
        try:
            yield
        finally:
            ready["value"] = False  # in-flight requests have finished when uvicorn gets here
            for model in served:
                await model.batcher.close()
            executor.shutdown(wait=True)

    app = FastAPI(title="dlkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Open Inference Protocol (KServe v2) with Triton's binary tensor data extension.")
    app.state.models = served
    app.state.metrics = metrics

    # -- server ------------------------------------------------------------------------------
    @app.get("/v2", summary="Server metadata")
    async def server_metadata():
        return json_response({"name": "dlkit", "version": __version__, "extensions": EXTENSIONS})

    @app.get("/v2/health/live", summary="Liveness")
    async def live():
        return json_response({"live": True})

    @app.get("/v2/health/ready", summary="Readiness: every model loaded and the server not stopping")
    async def server_ready():
        if not ready["value"]:
            return Response(json.dumps({"ready": False, "error": "the server is not ready"}), 503,
                            media_type="application/json")
        return json_response({"ready": True})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # -- models ------------------------------------------------------------------------------
    def metadata(name: str, version: str | None) -> Response:
        model = served.get(name, version)
        versions = served.versions(name) if version is None else [model.version]
        return json_response(model.metadata(versions))

    def model_ready(name: str, version: str | None) -> Response:
        model = served.get(name, version)
        if not ready["value"]:
            return error_response(503, f"model {name!r} is not ready")
        return json_response({"name": model.name, "ready": True})

    def config(name: str, version: str | None) -> Response:
        return json_response(served.get(name, version).config(max_queue_delay_ms, batching))

    async def infer(request: Request, name: str, version: str | None) -> Response:
        started = time.perf_counter()
        model = served.get(name, version)
        stats = model.metrics
        stats.requests += 1
        try:
            with model.batcher.arriving():
                body = await read_body(request, max_request_bytes)
            req = parse_infer_request(body, request.headers.get("inference-header-content-length"),
                                      model.inputs, model.outputs, model.max_batch_size)
            outputs, queued = await model.batcher.infer(req.inputs, req.batch)
            content, headers = encode_infer_response(model.name, model.version, req.id, outputs, req.outputs)
        except ProtocolError as exc:
            stats.failed(exc.status)
            return error_response(exc.status, str(exc))
        except QueueFull as exc:
            stats.failed(503)
            return error_response(503, f"model {model.name!r} is overloaded: {exc}; retry later", {"retry-after": "1"})
        except DlkitError as exc:  # the runtime failed on input that passed validation
            stats.failed(500)
            return error_response(500, str(exc))
        stats.queue_seconds.observe(queued)
        stats.request_seconds.observe(time.perf_counter() - started)
        return Response(content, headers=headers)

    @app.get("/v2/models/{name}", summary="Model metadata (latest version)")
    async def model_metadata(name: str):
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", summary="Model metadata")
    async def version_metadata(name: str, version: str):
        return metadata(name, version)

    @app.get("/v2/models/{name}/ready", summary="Model readiness (latest version)")
    async def latest_ready(name: str):
        return model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness")
    async def version_ready(name: str, version: str):
        return model_ready(name, version)

    @app.get("/v2/models/{name}/config", summary="Model configuration (Triton's JSON form)")
    async def latest_config(name: str):
        return config(name, None)

    @app.get("/v2/models/{name}/versions/{version}/config", summary="Model configuration (Triton's JSON form)")
    async def version_config(name: str, version: str):
        return config(name, version)

    # The infer endpoints take only the Request: FastAPI's per-parameter validation would cost
    # more than the rest of the routing, so the path parameters are read (and documented) by hand.
    @app.post("/v2/models/{name}/infer", summary="Inference (latest version)",
              openapi_extra={**INFER_OPENAPI, "parameters": [_path_param("name")]})
    async def infer_latest(request: Request):
        return await infer(request, request.path_params["name"], None)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference",
              openapi_extra={**INFER_OPENAPI, "parameters": [_path_param("name"), _path_param("version")]})
    async def infer_version(request: Request):
        params = request.path_params
        return await infer(request, params["name"], params["version"])

    # -- errors: always {"error": "..."} ----------------------------------------------------------
    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        return error_response(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path[:200]}",
                   405: f"method {request.method} is not allowed on {request.url.path[:200]}"}.get(
            exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(400, f"invalid request: {str(exc)[:300]}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logging.getLogger("dlkit.serve").exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error")

    app.add_middleware(Guard, token=token, metrics=metrics, log_access=log_access)
    return app


def _attach(model: ServedModel, metrics: Metrics, executor, max_batch_size: int, max_queue_delay_ms: float,
            max_queue_size: int, batching: bool) -> None:
    """Give ``model`` its metrics and its batcher."""
    stats = metrics.model(model.name, model.version, model.max_batch_size or 1)

    def on_batch(batch):
        stats.batch_size.observe(batch.rows)
        stats.compute_seconds.observe(batch.seconds)

    model.metrics = stats
    model.batcher = DynamicBatcher(
        model.run, executor, max_batch_size=model.max_batch_size or 1, max_queue_delay_ms=max_queue_delay_ms,
        max_queue_size=max_queue_size, batching=batching and model.max_batch_size is not None, on_batch=on_batch)
    metrics.queue_depth[(model.name, model.version)] = lambda: model.batcher.depth


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its decompressed form) passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > limit:
            raise ProtocolError(f"the request body of {declared} bytes exceeds the limit of {limit} bytes "
                                "(--max-request-bytes)", 413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"the request body exceeds the limit of {limit} bytes (--max-request-bytes)", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding[:40]!r} (use gzip, deflate or none)")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body does not decompress: {exc}") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"the decompressed request body exceeds the limit of {limit} bytes "
                            "(--max-request-bytes)", 413)
    return inflated


class Guard:
    """ASGI middleware: bearer-token check, in-flight and status counts, one JSON access-log line."""

    def __init__(self, app, token: str | None, metrics: Metrics, log_access: bool = True):
        self.app = app
        self.expected = f"bearer {token}".encode() if token else None
        self.metrics = metrics
        self.log_access = log_access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # unless a response starts
        sent = 0

        async def counting_send(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight += 1
        try:
            if self.expected is not None and scope["path"] not in HEALTH_PATHS and not self._authorized(scope):
                response = error_response(401, "this server requires the header 'Authorization: Bearer <token>'",
                                          {"www-authenticate": "Bearer"})
                await response(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.responses[status] = self.metrics.responses.get(status, 0) + 1
            if self.log_access and access_log.isEnabledFor(logging.INFO):
                self._log(scope, status, sent, time.perf_counter() - started)

    def _authorized(self, scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
                return hmac.compare_digest(value[:7].lower() + value[7:], self.expected)
        return False

    @staticmethod
    def _log(scope, status: int, sent: int, seconds: float) -> None:
        client = scope.get("client")
        received = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        access_log.info(json.dumps({
            "time": round(time.time(), 3), "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"], "path": scope["path"], "status": status,
            "ms": round(seconds * 1000, 3), "bytes_in": int(received) if received.isdigit() else None,
            "bytes_out": sent,
        }, separators=(",", ":")))
