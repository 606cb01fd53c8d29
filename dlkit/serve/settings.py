"""The server's settings: one typed object from the CLI to the data plane and both transports."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import InputError
from ..store.repository import ModelRepository

MiB = 1024 * 1024
MODEL_CONTROL_MODES = ("none", "explicit", "poll")


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``dlkit serve`` can be told; the defaults are the CLI's.

    ``threads`` is onnxruntime's intra-op thread count per model (None: onnxruntime's default,
    a spinning pool per session that competes with the event loop for the cores; the server's
    parallelism comes from batching and from running several models at once).
    """

    repo: Path = Path("models")
    models: tuple[str, ...] | None = None  # NAME or NAME:V; None: every exported model
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0  # 0: no gRPC (the CLI's default is 8001, like Triton)
    provider: str = "auto"
    max_batch_size: int = 64
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 1024
    batching: bool = True
    token: str | None = None
    max_request_bytes: int = 32 * MiB
    threads: int | None = 1
    log_access: bool = True
    max_inflight_bytes: int = 128 * MiB  # every body being received or parsed at once (503 beyond)
    max_connections: int = 1000  # open connections and tasks before uvicorn answers 503
    header_timeout: float = 10.0  # seconds from connecting to the end of the request headers
    body_timeout: float = 60.0  # seconds for a request body to arrive (408 beyond)
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    model_control_mode: str = "none"  # none | explicit | poll, as Triton's --model-control-mode
    repository_poll_secs: float = 15.0  # poll mode: seconds between checks of the repository (Triton's default)
    instances: int | None = None  # copies of each model run in parallel; None: config.pbtxt's instance_group, else 1

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_request_bytes < 1 \
                or self.max_queue_delay_ms < 0:
            raise InputError("max batch size, queue size and request bytes must be >= 1, the queue delay >= 0")
        if min(self.header_timeout, self.body_timeout, self.keep_alive) <= 0 or self.max_connections < 1 \
                or self.max_inflight_bytes < 1:
            raise InputError("timeouts must be > 0, the connection and in-flight byte limits >= 1")
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise InputError(f"--model-control-mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                             f"received {self.model_control_mode!r}")
        if self.repository_poll_secs <= 0:
            raise InputError("--repository-poll-secs must be > 0")
        if self.instances is not None and not 1 <= self.instances <= 64:
            raise InputError(f"--instances must be from 1 to 64, received {self.instances}")
        if self.token is not None and not self.token.strip():
            raise InputError("--token must not be empty")

    @classmethod
    def of(cls, repo: str | os.PathLike | None = None, models=None, **options) -> ServeSettings:
        """Settings from keyword options (the Python API's loose form); unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown serve option(s): {', '.join(unknown)}")
        given = dict(options)
        if repo is not None:  # a path or a ModelRepository
            given["repo"] = Path(repo.root if isinstance(repo, ModelRepository) else repo)
        if models is not None:
            given["models"] = tuple(models)
        return cls(**given)

    def with_(self, **changes) -> ServeSettings:
        """A copy with ``changes``."""
        return replace(self, **changes)
