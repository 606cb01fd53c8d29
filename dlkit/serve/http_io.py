"""HTTP plumbing under the REST routes: body reading with limits, the guard middleware, responses.

Kept apart from the route table (``app``) so that it reads as what it is: the ASGI details
(bearer token, in-flight counts, access log, size limits) that every endpoint shares.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from starlette.requests import ClientDisconnect, Request
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
    return Response(orjson.dumps(obj), status, media_type="application/json")


class BodyReader:
    """Reads request bodies within limits: per request, for all requests at once, and in time.

    ``limit`` caps one body (also after decompression); ``inflight`` caps the bytes of every
    body being received or parsed at once, so many large uploads cannot exhaust memory (503,
    retry later); ``timeout`` bounds how long a body may take to arrive (408), so a stalled
    upload does not hold its connection and its buffer forever.
    """

    def __init__(self, limit: int, inflight: int, timeout: float):
        self.limit = limit
        self.inflight = max(inflight, limit)
        self.timeout = timeout
        self.held = 0

    @contextmanager
    def reserve(self, request: Request, bound: int | None = None) -> Iterator[None]:
        """Hold the declared body size against the in-flight cap while the body is in use.

        ``bound`` is the largest body a valid request for the model can have: a larger declared
        size is refused before a byte is read.
        """
        size = self._declared(request, bound)
        if self.held + size > self.inflight:
            raise ProtocolError(f"the server is receiving {self.held} request bytes already (cap "
                                f"{self.inflight}, --max-inflight-bytes); retry later", 503)
        self.held += size
        try:
            yield
        finally:
            self.held -= size

    def _declared(self, request: Request, bound: int | None) -> int:
        declared = request.headers.get("content-length")
        if declared is None:
            return self.limit  # chunked: it may grow up to the limit
        if not re.fullmatch(r"[0-9]{1,15}", declared):
            raise ProtocolError(f"invalid Content-Length {declared[:40]!r}")
        size = int(declared)
        if size > self.limit:
            raise ProtocolError(f"the request body of {declared} bytes exceeds the limit of {self.limit} bytes "
                                "(--max-request-bytes)", 413)
        encoded = request.headers.get("content-encoding", "identity").strip().lower() != "identity"
        if bound is not None and size > bound and not encoded:
            raise ProtocolError(f"the request body of {declared} bytes is larger than any valid request for this "
                                f"model can be ({bound} bytes at its maximum batch size)", 413)
        return size

    async def read(self, request: Request) -> bytes:
        """The body, decompressed; 413 past the limit, 408 past the deadline, 499 if the client left."""
        try:
            body = await asyncio.wait_for(self._receive(request), self.timeout)
        except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
            raise ProtocolError(f"the request body did not arrive within {self.timeout:g} s "
                                "(--body-timeout)", 408) from None
        except ClientDisconnect:
            raise ProtocolError("the client disconnected before sending the whole request body", 499) from None
        return self._inflate(request, body)

    async def _receive(self, request: Request) -> bytes:
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limit:
                raise ProtocolError(f"the request body exceeds the limit of {self.limit} bytes "
                                    "(--max-request-bytes)", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def _inflate(self, request: Request, body: bytes) -> bytes:
        limit = self.limit
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
            "ms": round(seconds * 1000, 3),
            "bytes_in": int(received) if received.isdigit() and len(received) < 19 else None,
            "bytes_out": sent,
        }, separators=(",", ":")))
