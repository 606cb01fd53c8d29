"""Shared helpers of the serve tests: a real `dlkit serve` subprocess on loopback and request builders."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

MODELS = ["mlp-digits", "cnn-digits", "rnn-digits", "gru-digits"]
MAX_BATCH = 16
MAX_BYTES = 200_000
TOKEN = "s3cret-token"
STARTUP_SECONDS = 120
# Runs the real CLI and reports, when the process ends, whether torch was ever imported.
RUNNER = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('dlkit-test: torch imported: %s' % ('torch' in sys.modules), "
    "file=sys.stderr, flush=True))\n"
    "from dlkit.cli import main\n"
    "main(sys.argv[1:])\n"
)


class ServerProcess:
    """A `dlkit serve` subprocess on a free loopback port, its stderr collected line by line."""

    def __init__(self, repo: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, "serve", "--repo", str(repo), "--port", "0", "--threads", "1",
             *(() if "--grpc-port" in args else ("--grpc-port", "0")), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for(r"on http://127\.0\.0\.1:(\d+)")
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = STARTUP_SECONDS) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; stderr:\n"
                                     + "\n".join(self.lines[-30:])) from None
            if line is None:
                raise AssertionError(f"the server ended (rc {self.proc.poll()}) before {pattern!r}; stderr:\n"
                                     + "\n".join(self.lines[-30:]))
            if re.search(pattern, line):
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()



def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers, such as gRPC, that must be told one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def infer_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    # Batched and single runs may round differently in the last bits.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def _raw(body: dict | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


X1 = digits(1)
