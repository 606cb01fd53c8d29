"""The REST transport: a route table from the Open Inference Protocol (KServe v2) to the data plane.

``create_app`` builds the :class:`~dlkit.serve.dataplane.DataPlane` (which loads the models) and
returns a FastAPI app whose handlers only read the request, call the data plane and write the
answer. Infer bodies are parsed by ``protocol`` (not by FastAPI's pydantic layer) because the
binary extension mixes JSON and raw bytes in one body and validation must happen before any
tensor is allocated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .. import __version__
from ..store.repository import ModelRepository
from .dataplane import DataPlane
from .http_io import BodyReader, Guard, error_response, json_response
from .metrics import CONTENT_TYPE
from .protocol import ProtocolError, encode_infer_response, parse_infer_request
from .settings import ServeSettings

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


# Every error answer, documented once for the whole app (schema-driven clients and fuzzers read it).
_ERROR = {"description": "an error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
ERROR_RESPONSES = dict.fromkeys((400, 401, 404, 405, 408, 409, 413, 500, 503), _ERROR)

GRPC_GRACE_SECONDS = 30
# Bodies from this size are parsed in a worker thread, off the event loop.
OFF_LOOP_BYTES = 256 * 1024


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def create_app(repo=None, models: list[str] | None = None, *, settings: ServeSettings | None = None,
               **options) -> FastAPI:
    """A FastAPI app serving ``repo``'s exported models (or ``models``: NAME or NAME:V).

    Give either ``settings`` or ``repo`` with :class:`ServeSettings` fields as keywords
    (``batching=False`` runs every request alone; ``token`` requires ``Authorization: Bearer``
    on every endpoint but health). Models load here, so errors surface before a port is bound.
    """
    settings = settings or ServeSettings.of(repo, models, **options)
    plane = DataPlane(settings, repo if isinstance(repo, ModelRepository) else None)

    @asynccontextmanager
    async def lifespan(app):
        await plane.start()
        grpc_server = None
        if settings.grpc_port:
            from .grpc_service import start_grpc  # grpcio loads only when the port is on

            grpc_server = await start_grpc(plane, settings.host, settings.grpc_port)
            print(f"dlkit serve: gRPC (KServe v2) on {settings.host}:{settings.grpc_port}", file=sys.stderr,
                  flush=True)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_SECONDS)  # answers the calls it has accepted
            await plane.stop()  # in-flight requests have finished when uvicorn gets here

    app = FastAPI(title="dlkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  # a 307 to another spelling is not an answer (spec conformance)
                  redirect_slashes=False, responses=ERROR_RESPONSES,
                  description="Open Inference Protocol (KServe v2) with Triton's binary tensor data extension.")
    app.state.plane = plane
    app.state.models = plane.models
    app.state.metrics = plane.metrics
    _server_routes(app, plane)
    _model_routes(app, plane)
    _repository_routes(app, plane)
    _error_handlers(app)
    app.add_middleware(Guard, token=settings.token, metrics=plane.metrics, log_access=settings.log_access)
    return app


def _server_routes(app: FastAPI, plane: DataPlane) -> None:
    @app.get("/v2", summary="Server metadata")
    @app.get("/v2/", include_in_schema=False)  # the spec writes "v2": both spellings answer, no redirect
    async def server_metadata():
        return json_response(plane.server_metadata())

    @app.api_route("/v2/health/live", methods=["GET", "HEAD"], summary="Liveness")
    async def live():
        return json_response({"live": plane.live()})

    @app.api_route("/v2/health/ready", methods=["GET", "HEAD"],
                   summary="Readiness: every model loaded and the server not stopping")
    async def server_ready():
        if not plane.ready():
            return json_response({"ready": False, "error": "the server is not ready"}, 503)
        return json_response({"ready": True})

    @app.get("/v2/models/stats", summary="Statistics of every model (Triton's statistics extension)")
    async def all_statistics():
        return json_response(plane.statistics())

    @app.get("/metrics", summary="Prometheus metrics",
             responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def prometheus():
        return Response(plane.metrics.render(), media_type=CONTENT_TYPE)


def _model_routes(app: FastAPI, plane: DataPlane) -> None:
    s = plane.settings
    bodies = BodyReader(s.max_request_bytes, s.max_inflight_bytes, s.body_timeout)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        model = plane.model(name, version)

        async def receive():
            with bodies.reserve(request, model.max_body_bytes):
                body = await bodies.read(request)
                args = (body, request.headers.get("inference-header-content-length"), model.inputs,
                        model.outputs, model.max_batch_size)
                if len(body) < OFF_LOOP_BYTES:
                    return parse_infer_request(*args)
                # Parsing megabytes of JSON takes long enough to stall every other connection.
                return await asyncio.get_running_loop().run_in_executor(None, parse_infer_request, *args)

        def encode(req, outputs):
            return encode_infer_response(model.name, model.version, req.id, outputs, req.outputs)

        content, headers = await plane.infer(model, receive, encode)
        return Response(content, headers=headers)

    for suffix, version_part in (("", False), ("/versions/{version}", True)):
        base = "/v2/models/{name}" + suffix
        latest = "" if version_part else " (latest version)"
        extra = {"parameters": [_path_param("name")] + ([_path_param("version")] if version_part else [])}
        for path, call, summary in (("", plane.model_metadata, "Model metadata"),
                                    ("/ready", plane.model_ready, "Model readiness"),
                                    ("/config", plane.model_config, "Model configuration (Triton's JSON form)"),
                                    ("/stats", plane.statistics, "Model statistics (Triton's statistics extension)")):
            app.add_api_route(base + path, _getter(call), methods=["GET"], summary=summary + latest,
                              openapi_extra=extra)

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


def _repository_routes(app: FastAPI, plane: DataPlane) -> None:
    """Triton's model repository extension: index, load, unload (see ``control``)."""
    s = plane.settings
    bodies = BodyReader(s.max_request_bytes, s.max_inflight_bytes, s.body_timeout)

    async def body_of(request: Request) -> dict:
        with bodies.reserve(request):
            raw = await bodies.read(request)
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError("malformed JSON in the request body") from None
        if not isinstance(doc, dict):
            raise ProtocolError("the request body must be a JSON object")
        return doc

    @app.post("/v2/repository/index", summary="Every model of the repository and its state")
    async def repository_index(request: Request):
        ready = (await body_of(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise ProtocolError(f"'ready' must be true or false, received {ready!r}"[:200])
        return json_response(plane.control.index(ready))

    @app.post("/v2/repository/models/{name}/load", summary="Load or reload a model (explicit mode)",
              openapi_extra={"parameters": [_path_param("name")]})
    async def load(request: Request):
        doc = await body_of(request)
        await plane.control.load(request.path_params["name"], doc.get("parameters"))
        return Response(status_code=200)

    @app.post("/v2/repository/models/{name}/unload", summary="Unload a model (explicit mode)",
              openapi_extra={"parameters": [_path_param("name")]})
    async def unload(request: Request):
        doc = await body_of(request)
        await plane.control.unload(request.path_params["name"], doc.get("parameters"))
        return Response(status_code=200)


def _getter(call):
    """A GET handler answering ``call(name, version)`` as JSON (version None on the latest route)."""
    async def handler(request: Request):
        params = request.path_params
        return json_response(call(params["name"], params.get("version")))

    return handler


def _error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": "..."}``."""
    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        if exc.status == 499:  # nobody is left to answer: one line, no traceback
            logging.getLogger("dlkit.serve").warning("dlkit serve: %s (%s %s)", exc, request.method,
                                                     request.url.path[:200])
        headers = {"retry-after": "1"} if exc.status == 503 else None
        return error_response(exc.status, str(exc), headers)

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
