"""Running the app: uvicorn, the access log, graceful shutdown and the exposed-without-token warning."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading

import uvicorn

from ..errors import InputError
from ..store.repository import ModelRepository
from .app import create_app
from .settings import ServeSettings

GRACE_SECONDS = 30


def bind_warning(host: str, token: str | None) -> str | None:
    """The warning to print when ``host`` is reachable from other machines and no token is set."""
    if token:
        return None
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (f"serving on {host} without a token: anyone who can reach this port can use the models; "
            "set --token (or DLKIT_TOKEN) and put TLS in front")


def serve(settings, **options) -> None:
    """Load the models, then serve them over HTTP until SIGINT/SIGTERM, finishing in-flight requests.

    ``settings`` is a :class:`ServeSettings`, or the repository (a path or ModelRepository) with
    ServeSettings fields as keywords. ``port=0`` picks a free port; the address is printed on
    stderr once the server listens.
    """
    repo = None
    if not isinstance(settings, ServeSettings):
        repo = settings if isinstance(settings, ModelRepository) else None
        settings = ServeSettings.of(settings, **options)
    warning = bind_warning(settings.host, settings.token)
    if warning:
        print(f"dlkit serve: warning: {warning}", file=sys.stderr, flush=True)
    app = create_app(repo, settings=settings)
    if settings.grpc_port:
        _check_free(settings.host, settings.grpc_port, "--grpc-port")
    logger = logging.getLogger("dlkit.access")
    if settings.log_access and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACE_SECONDS, server_header=False,
                            http=_header_deadline_protocol(settings.header_timeout),
                            limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive,
                            loop="asyncio")  # grpc.aio shares this loop
    server = _Server(config, names=[f"{m.name}:{m.version}" for m in app.state.models])
    server.run()


def _check_free(host: str, port: int, option: str) -> None:
    """A one-line error now rather than a failed start-up later when ``port`` is taken."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({option}): {exc.strerror or exc}") from None


def _header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete
    ``seconds`` after it opened (uvicorn's keep-alive timer starts only after a first response,
    so idle or trickling connections would otherwise be held forever and starve the server)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _expire(self):
            self._deadline = None
            if self.cycle is None or self.cycle.response_complete:  # still no complete request headers
                self.timeout_keep_alive_handler()

        def handle_events(self):
            super().handle_events()
            if self._deadline is not None and self.cycle is not None and not self.cycle.response_complete:
                self._deadline.cancel()  # this request's headers are in
                self._deadline = None

        def on_response_complete(self):
            super().on_response_complete()
            if self._deadline is None and not self.transport.is_closing():
                self._arm()  # the next request's headers get the same deadline

        def connection_lost(self, exc):
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the bound address and exiting normally after a signal."""

    def __init__(self, config, names: list[str]):
        super().__init__(config)
        self.names = names

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if not self.started:
            return
        for s in self.servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"dlkit serve: serving {', '.join(self.names) or 'no model yet'} on http://{shown}:{port} "
                      "(Ctrl+C to stop)", file=sys.stderr, flush=True)

    async def shutdown(self, sockets=None):
        print("dlkit serve: stopping: finishing in-flight requests", file=sys.stderr, flush=True)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises the signal after its graceful shutdown, which would end the process
        # by SIGTERM (or a KeyboardInterrupt) although every request was answered: exit normally.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
