"""HTTP plumbing under the REST routes: body reading with limits, the guard middleware, responses.

Kept apart from the route table (``app``) so that it reads as what it is: the ASGI details
(bearer token, in-flight counts, access log, size limits) that every endpoint shares.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import zlib

from starlette.requests import Request
from starlette.responses import Response

from .metrics import Metrics
from .protocol import ProtocolError

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
access_log = logging.getLogger("dlkit.access")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The protocol's error body: ``{"error": "..."}``."""
    return Response(json.dumps({"error": message}), status, headers, media_type="application/json")


def json_response(obj, status: int = 200) -> Response:
    """A compact JSON response."""
    return Response(json.dumps(obj, separators=(",", ":")), status, media_type="application/json")


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
