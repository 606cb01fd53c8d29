"""Triton's model repository extension: index, load and unload, and the three model control modes.

``none`` (the default, as Triton's): what was loaded at start-up stays; load and unload are
refused. ``explicit``: clients load and unload models through the API (``--models`` picks what
loads at start-up; without it every exported model does, unlike Triton, which then loads none).
``poll``: a background task checks the repository every ``--repository-poll-secs`` and loads
new or re-exported versions and unloads removed ones; the API refuses load and unload.

A load opens only versions whose ``model.onnx`` changed (mtime and size), in a worker thread,
so the server keeps answering meanwhile; then the new set of versions replaces the old one in
one step on the event loop. An unloaded version stops taking new requests at once; those
already received finish, then its batcher stops. Models are only ever loaded from the server's
own repository by name: a client cannot hand it a file or a configuration.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from ..errors import DlkitError
from ..store.repository import ModelVersion, check_name, parse_ref
from .model_set import ServedModel, onnx_fingerprint, open_version
from .protocol import ProtocolError

if TYPE_CHECKING:
    from .dataplane import DataPlane

log = logging.getLogger("dlkit.serve")


class ModelControl:
    """Index, load, unload and the poller over one data plane's model set."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.settings = plane.settings
        self.mode = self.settings.model_control_mode
        self.reasons: dict[str, dict[int, str]] = {}  # versions not served, and why
        self._failed: dict[tuple[str, int], tuple] = {}  # fingerprints that failed to open
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """On the serving loop: the lock, and the poller in poll mode."""
        self._lock = asyncio.Lock()
        if self.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass

    # -- the API ---------------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict]:
        """Every model of the repository: served versions READY, others UNAVAILABLE with a reason."""
        models = self.plane.models
        names = sorted(set(self.plane.repo.names()) | set(models.by_name))
        entries = []
        for name in names:
            served = [{"name": name, "version": str(v), "state": "READY", "reason": ""}
                      for v in models.versions(name)]
            other = [{"name": name, "version": str(v), "state": "UNAVAILABLE", "reason": reason}
                     for v, reason in sorted(self.reasons.get(name, {}).items()) if v not in models.versions(name)]
            if ready_only:
                entries.extend(served)
            else:
                entries.extend(served + other or [{"name": name}])
        return entries

    async def load(self, name: str, parameters: dict | None = None) -> None:
        """Load (or reload) every exported version of ``name``; refused unless the mode is explicit."""
        self._allowed("load")
        _check_parameters(parameters or {})
        _valid(name)
        async with self._lock:
            await self._sync(name, requested=True)

    async def unload(self, name: str, parameters: dict | None = None) -> None:
        """Stop serving ``name`` once its in-flight requests are answered (a no-op if not loaded)."""
        self._allowed("unload")
        _valid(name)
        async with self._lock:
            retired = self.plane.models.replace(name, [])
            if retired:
                self.plane.models.unloaded.add(name)
                self.reasons[name] = {m.version: "unloaded" for m in retired}
            for model in retired:
                await self.plane.retire(model)

    def _allowed(self, action: str) -> None:
        if self.mode != "explicit":
            raise ProtocolError(f"explicit model {action} is not allowed: the server runs with "
                                f"--model-control-mode {self.mode} (start it with explicit)", 409)

    # -- loading ---------------------------------------------------------------------------------
    async def _sync(self, name: str, requested: bool) -> None:
        """Make the served versions of ``name`` those exported in the repository now."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, _exported, self.plane.repo, name)
        if requested and not found:
            status = 404 if not self.plane.repo.versions(name) else 400
            raise ProtocolError(f"failed to load {name!r}: no version of it in the repository has a "
                                f"model.onnx (run `dlkit export onnx {name}`)", status)
        current = {m.version: m for m in self.plane.models.by_name.get(name, {}).values()}
        keep: list[ServedModel] = []
        errors: dict[int, str] = {}
        for version, fingerprint in found:
            old = current.get(version.version)
            if old is not None and old.fingerprint == fingerprint:
                keep.append(old)
                continue
            if not requested and self._failed.get((name, version.version)) == fingerprint:
                keep.extend([old] if old is not None else [])  # unchanged since it failed: no retry
                errors[version.version] = "failed to load (unchanged since)"
                continue
            try:
                model = await loop.run_in_executor(None, self._open, version)
            except DlkitError as exc:
                errors[version.version] = str(exc)[:300]
            except Exception as exc:  # noqa: BLE001 - a hostile file must not stop the server
                errors[version.version] = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                self._failed.pop((name, version.version), None)
                self.plane.add_model(model)
                keep.append(model)
                continue
            self._failed[(name, version.version)] = fingerprint
            keep.extend([old] if old is not None else [])  # Triton keeps serving the old one
        retired = self.plane.models.replace(name, keep)
        self.plane.models.unloaded.discard(name)
        self.reasons[name] = errors
        for model in retired:
            await self.plane.retire(model)
        if errors and (requested or any(v not in current for v in errors)):
            shown = "; ".join(f"version {v}: {reason}" for v, reason in sorted(errors.items()))
            if requested:
                raise ProtocolError(f"failed to load {name!r}: {shown}")
            print(f"dlkit serve: warning: {name}: {shown}", file=sys.stderr, flush=True)

    def _open(self, version: ModelVersion) -> ServedModel:
        s = self.settings
        return open_version(version, s.provider, s.threads, s.max_batch_size, s.instances)

    async def _poll(self) -> None:
        """Every ``repository_poll_secs``: load what is new or changed, unload what is gone."""
        limit = {parse_ref(ref)[0] for ref in self.settings.models} if self.settings.models else None
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                names = set(self.plane.repo.names()) | set(self.plane.models.by_name)
                for name in sorted(names if limit is None else names & limit):
                    async with self._lock:
                        await self._sync(name, requested=False)
            except Exception:  # noqa: BLE001 - the poller must outlive one bad scan
                log.exception("dlkit serve: polling the repository failed")


def _exported(repo, name: str) -> list[tuple[ModelVersion, tuple]]:
    """Each version of ``name`` with a model.onnx, and the file's fingerprint (in a worker thread)."""
    found = []
    for number in repo.versions(name):
        version = ModelVersion(name, number, repo.root / name / str(number))
        try:
            if version.has_onnx():
                found.append((version, onnx_fingerprint(version)))
        except OSError:
            continue  # removed while looking: the next poll sees the new state
    return found


def _valid(name: str) -> None:
    try:
        check_name(name)
    except DlkitError as exc:
        raise ProtocolError(str(exc)[:300]) from None


def _check_parameters(parameters: dict) -> None:
    """Triton's load may carry a configuration or model files: dlkit loads only from its repository."""
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    for key in parameters:
        if key == "config" or str(key).startswith("file:"):
            raise ProtocolError(f"load parameter {str(key)[:60]!r} is not supported: dlkit serve loads models "
                                "only from its own repository")
