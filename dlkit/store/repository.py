"""The model repository: ``<root>/<name>/<version>/`` folders that appear complete or not at all.

A new version is built in ``<root>/<name>/.staging/<run>/`` and renamed into place in one
``os.rename`` once its meta.json is written, so an interrupted command never leaves a version
that looks complete. Versions are integers that only grow; ``NAME`` means the latest version,
``NAME:3`` a fixed one.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dlkit.store.atomic import fsync_dir, pid_alive, read_json, write_json
from dlkit.errors import DlkitError, InputError
from dlkit.store.schema import check_meta

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING = ".staging"
META = "meta.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"


def default_root() -> Path:
    """``$DLKIT_REPO`` or ``./models``."""
    return Path(os.environ.get("DLKIT_REPO") or "models")


def check_name(name: str) -> str:
    """A model name usable as a folder name and a URL segment."""
    if not NAME_RE.match(name or ""):
        raise InputError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` -> (NAME, None); ``NAME:3`` -> (NAME, 3)."""
    name, sep, version = ref.partition(":")
    check_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InputError(f"invalid version in {ref!r}: expected NAME or NAME:N with N >= 1")
    return name, int(version)


@dataclass(frozen=True)
class ModelVersion:
    """One complete version folder."""

    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @cached_property
    def meta(self) -> dict[str, Any]:
        return check_meta(read_json(self.path / META), self.path / META)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX

    def has_weights(self) -> bool:
        return self.weights_path.is_file()

    def has_onnx(self) -> bool:
        return self.onnx_path.is_file()

    def update_meta(self, **fields: Any) -> None:
        """Merge fields into meta.json (atomically)."""
        meta = dict(self.meta)
        meta.update(fields)
        write_json(self.path / META, meta)
        self.__dict__["meta"] = meta


class StagedVersion:
    """A version under construction; :meth:`commit` publishes it under the next number."""

    def __init__(self, repo: "ModelRepository", name: str, path: Path, created_root: bool = False):
        self.repo = repo
        self.name = name
        self.path = path
        self.created_root = created_root  # staging made the repository folder: discard removes it
        _ACTIVE.add(path)

    def commit(self, meta: dict[str, Any]) -> ModelVersion:
        """Write meta.json last, then rename the folder to the next free version number."""
        base = self.repo.root / self.name
        for attempt in range(100):
            version = self.repo.next_version(self.name)
            meta = check_meta({**meta, "name": self.name, "version": version}, self.path / META)
            write_json(self.path / META, meta)
            target = base / str(version)
            try:
                os.rename(self.path, target)
            except OSError:
                if target.exists():  # another process published this number first
                    continue
                raise
            fsync_dir(base)
            _ACTIVE.discard(self.path)
            self._cleanup_empty_staging()
            return ModelVersion(self.name, version, target)
        raise DlkitError(f"could not allocate a version number for {self.name!r}")

    def discard(self) -> None:
        """Remove the unfinished folder (bad input, or a failure before commit)."""
        shutil.rmtree(self.path, ignore_errors=True)
        _ACTIVE.discard(self.path)
        self._cleanup_empty_staging()

    def release(self) -> None:
        """Leave the folder for ``--resume`` (the run failed after checkpointing)."""
        _ACTIVE.discard(self.path)

    def _cleanup_empty_staging(self) -> None:
        staging = self.path.parent
        try:
            staging.rmdir()  # only succeeds when no other run is staging
            staging.parent.rmdir()  # and the model folder itself, when nothing was published
            if self.created_root:  # and the repository, when this run created it for nothing
                staging.parent.parent.rmdir()
        except OSError:
            pass


class ModelRepository:
    """A folder of models, each a folder of integer versions."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    # -- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / META).is_file()
        )

    def next_version(self, name: str) -> int:
        folder = self.root / name
        taken = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        return max(taken, default=0) + 1

    def resolve(self, ref: str) -> ModelVersion:
        """``NAME`` (latest) or ``NAME:V``; unknown ones are an InputError listing what exists."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise InputError(f"no model {name!r} in repository {self.root} (models: {known})")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise InputError(
                f"model {name!r} has no version {version} (versions: {', '.join(map(str, versions))})"
            )
        return ModelVersion(name, version, self.root / name / str(version))

    def all_versions(self) -> list[ModelVersion]:
        return [ModelVersion(n, v, self.root / n / str(v)) for n in self.names() for v in self.versions(n)]

    # -- writing -------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Refuse, before any expensive work, a repository this process cannot write to: a
        read-only or full file system, a folder without permission, a path through a file."""
        import tempfile

        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(existing))
            # A real write: os.access answers yes for root on a read-only bind mount's folders.
            with tempfile.TemporaryFile(dir=existing, prefix=".dlkit-probe-"):
                pass
        except OSError as exc:
            raise InputError(f"--repo {self.root}: cannot write there ({exc.strerror or exc}"
                             f"{': ' + str(existing) if existing != self.root else ''})") from None

    def stage(self, name: str) -> StagedVersion:
        """A fresh staging folder for a new version of ``name``."""
        check_name(name)
        created_root = not self.root.exists()
        staging = self.root / name / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{int(time.time() * 1000)}-{os.getpid()}"
        path.mkdir()
        _ACTIVE.add(path)
        return StagedVersion(self, name, path, created_root)

    def interrupted(self, name: str, marker: str) -> list[StagedVersion]:
        """Staging folders of ``name`` left by runs that died, newest first, holding ``marker``."""
        staging = self.root / name / STAGING
        if not staging.is_dir():
            return []
        found = []
        for path in staging.iterdir():
            if path.is_dir() and (path / marker).is_file() and not _in_use(path):
                found.append(path)
        found.sort(key=lambda p: p.name, reverse=True)
        return [StagedVersion(self, name, p) for p in found]

    def clean_staging(self, name: str) -> list[Path]:
        """Remove staging folders of ``name`` whose process is gone; return what was removed."""
        staging = self.root / name / STAGING
        removed = []
        if staging.is_dir():
            for path in staging.iterdir():
                if not _in_use(path):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            if not any(staging.iterdir()):
                staging.rmdir()
        return removed


# Staging folders this process is writing right now (a pid check alone cannot tell them
# from ones an earlier, failed call in the same process left behind).
_ACTIVE: set[Path] = set()


def _in_use(path: Path) -> bool:
    pid = path.name.rpartition("-")[2]
    if path in _ACTIVE:
        return True
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    return pid_alive(int(pid))
