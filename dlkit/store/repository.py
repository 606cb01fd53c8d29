"""The model repository: ``<root>/<name>/<version>/`` folders that appear complete or not at all.

A new version is built in ``<root>/<name>/.staging/<run>/`` and renamed into place in one
``os.rename`` once its meta.json is written, so an interrupted command never leaves a version
that looks complete. Versions are integers that only grow; ``NAME`` means the latest version,
``NAME:3`` a fixed one.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dlkit.errors import DlkitError, InputError
from dlkit.store.atomic import fsync_dir, pid_alive, read_json, write_json
from dlkit.store.schema import check_meta

# Used with fullmatch: "$" would accept a trailing newline, and str.isdigit() accepts "²" and
# Arabic-Indic digits, which int() then rejects or reads as another number.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")  # canonical, ASCII, small enough for int() and JSON
STAGE_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,10}")  # "<ms>-<pid>": the only entries cleanup deletes
STAGING = ".staging"
META = "meta.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
LOCK = ".lock"  # in each run folder, flock'ed by the process writing it: the liveness test


def default_root() -> Path:
    """``$DLKIT_REPO`` or ``./models``."""
    return Path(os.environ.get("DLKIT_REPO") or "models")


def check_name(name: str) -> str:
    """A model name usable as a folder name and a URL segment."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def is_version(text: str) -> bool:
    """Whether a folder name or ref part is a version number (ASCII digits, no leading zero)."""
    return VERSION_RE.fullmatch(text) is not None


def check_inside(root: Path, path: Path) -> Path:
    """``path`` with links resolved, refused (InputError) unless it stays inside ``root``.

    The one check every read and write of a repository path goes through, so a symlinked
    version folder, meta.json or staging folder cannot make dlkit touch files elsewhere.
    """
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise InputError(f"{path}: a link leading outside the repository {root} ({real}); refusing to use it")
    return real


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` -> (NAME, None); ``NAME:3`` -> (NAME, 3)."""
    name, sep, version = ref.partition(":")
    check_name(name)
    if not sep:
        return name, None
    if not is_version(version):
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

    @property
    def root(self) -> Path:
        """The repository this version lives in (``<root>/<name>/<version>``)."""
        return self.path.parent.parent

    def inside(self, path: Path) -> Path:
        """``path`` (a file of this version), refused if a link takes it out of the repository."""
        check_inside(self.root, path)
        return path

    @cached_property
    def meta(self) -> dict[str, Any]:
        return check_meta(read_json(self.inside(self.path / META)), self.path / META)

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
        write_json(self.inside(self.path / META), meta)
        self.__dict__["meta"] = meta


class StagedVersion:
    """A version under construction; :meth:`commit` publishes it under the next number."""

    def __init__(self, repo: ModelRepository, name: str, path: Path, created_root: bool = False):
        self.repo = repo
        self.name = name
        self.path = path
        self.created_root = created_root  # staging made the repository folder: discard removes it
        self._lock: int | None = None  # held by stage() and claim(); merely listing a folder holds nothing

    def claim(self) -> StagedVersion:
        """Hold this folder's lock (to resume it); an InputError if another process holds it."""
        if self._lock is None:
            self._lock = _try_lock(self.path)
            if self._lock is None:
                raise InputError(f"{self.path}: another run is using this staging folder")
            _ACTIVE.add(self.path)
        return self

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def commit(self, meta: dict[str, Any]) -> ModelVersion:
        """Write meta.json last, then rename the folder to the next free version number."""
        base = self.repo.root / self.name
        for _attempt in range(100):
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
            (target / LOCK).unlink(missing_ok=True)  # published: out of staging, no lock needed
            self._unlock()
            _ACTIVE.discard(self.path)
            self._cleanup_empty_staging()
            return ModelVersion(self.name, version, target)
        raise DlkitError(f"could not allocate a version number for {self.name!r}")

    def discard(self) -> None:
        """Remove the unfinished folder (bad input, or a failure before commit)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()
        _ACTIVE.discard(self.path)
        self._cleanup_empty_staging()

    def release(self) -> None:
        """Leave the folder for ``--resume`` (the run failed after checkpointing)."""
        self._unlock()
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
        """Models with at least one complete version (folders that leave the repository skipped)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            try:
                if NAME_RE.fullmatch(p.name) and p.is_dir() and self.versions(p.name):
                    found.append(p.name)
            except InputError:
                continue  # resolve(NAME) says why; one bad folder must not hide the others
        return sorted(found)

    def model_folder(self, name: str) -> Path:
        """``<root>/<name>``, the name checked first and the folder refused if it leaves the root."""
        folder = self.root / check_name(name)
        check_inside(self.root, folder)
        return folder

    def versions(self, name: str) -> list[int]:
        folder = self.model_folder(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if is_version(p.name) and (p / META).is_file())

    def next_version(self, name: str) -> int:
        folder = self.model_folder(name)
        taken = [int(p.name) for p in folder.iterdir() if is_version(p.name)] if folder.is_dir() else []
        return max(taken, default=0) + 1

    def resolve(self, ref: str) -> ModelVersion:
        """``NAME`` (latest) or ``NAME:V``; unknown ones are an InputError listing what exists."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            folder = self.model_folder(name)
            loose = sorted((p for p in folder.iterdir() if is_version(p.name) and (p / ONNX).is_file()),
                           key=lambda p: int(p.name)) if folder.is_dir() else []
            if loose:  # a graph copied in by hand: meta.json is what makes a folder a version
                raise InputError(f"{loose[-1]} holds a model.onnx but no meta.json: bring it in with "
                                 f"`dlkit import onnx {loose[-1] / ONNX} --name {name}`")
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

    def staging_folder(self, name: str, create: bool = False) -> Path | None:
        """``<root>/<name>/.staging`` if it exists (or ``create``): a real folder inside the root.

        ``lstat``, not ``stat``: a ``.staging`` that is a link (to anywhere) is refused rather
        than followed, so cleanup can never delete what lies behind it.
        """
        folder = self.model_folder(name)
        staging = folder / STAGING
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                staging.mkdir()
            except FileExistsError:
                pass
        try:
            mode = os.lstat(staging).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(mode):
            raise InputError(f"{staging}: not a real folder (a link or a file); refusing to stage or clean there")
        check_inside(self.root, staging)
        return staging

    def stage(self, name: str) -> StagedVersion:
        """A fresh staging folder for a new version of ``name``."""
        check_name(name)
        created_root = not self.root.exists()
        staging = self.staging_folder(name, create=True)
        assert staging is not None
        path, lock = _new_run(staging)
        staged = StagedVersion(self, name, path, created_root)
        staged._lock = lock
        _ACTIVE.add(path)
        return staged

    @contextmanager
    def workspace(self, kind: str) -> Iterator[Path]:
        """A scratch folder for one command's intermediate files, ``<root>/.staging/<kind>/<run>``.

        Locked while in use and removed afterwards; folders that killed runs of the same kind
        left are removed when the next one starts, so nothing piles up in ``$TMPDIR``.
        """
        area = self.root / STAGING / check_name(kind)
        area.mkdir(parents=True, exist_ok=True)
        for folder in (self.root / STAGING, area):
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise InputError(f"{folder}: not a real folder (a link or a file); refusing to work there")
        check_inside(self.root, area)
        for stale in _runs_in(area):
            _remove_if_stale(stale)
        path, lock = _new_run(area)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(lock)
            for folder in (area, area.parent):
                try:
                    folder.rmdir()
                except OSError:
                    break

    def _staged_runs(self, name: str) -> list[Path]:
        """The run folders in ``name``'s staging area: real folders named like a run, nothing else."""
        staging = self.staging_folder(name)
        return [] if staging is None else _runs_in(staging)

    def interrupted(self, name: str, marker: str, held_too: bool = False) -> list[StagedVersion]:
        """Staging folders of ``name`` left by runs that died, newest first, holding ``marker``
        (``held_too``: also those a live process holds, for the other ranks of a resumed run)."""
        found = [p for p in self._staged_runs(name) if (p / marker).is_file() and (held_too or not _in_use(p))]
        found.sort(key=lambda p: p.name, reverse=True)
        return [StagedVersion(self, name, p) for p in found]

    def clean_staging(self, name: str) -> list[Path]:
        """Remove staging folders of ``name`` whose process is gone; return what was removed."""
        removed = []
        for path in self._staged_runs(name):
            if _remove_if_stale(path):
                removed.append(path)
        staging = self.staging_folder(name)
        if staging is not None and not any(staging.iterdir()):
            staging.rmdir()
        return removed


# Staging folders this process is writing right now (a pid check alone cannot tell them
# from ones an earlier, failed call in the same process left behind).
_ACTIVE: set[Path] = set()


def _runs_in(staging: Path) -> list[Path]:
    """The run folders in a staging area: real folders named like a run, nothing else."""
    return [p for p in staging.iterdir() if STAGE_RE.fullmatch(p.name) and stat.S_ISDIR(os.lstat(p).st_mode)]


def _new_run(staging: Path) -> tuple[Path, int]:
    """A new run folder in ``staging`` and the fd holding its lock."""
    run = f"{int(time.time() * 1000)}-{os.getpid()}"
    # Locked before it carries a run's name, so no other process ever sees it unlocked; the
    # pending name matches no cleanup pattern.
    pending = staging / f".{run}.new"
    pending.mkdir()
    lock = _try_lock(pending, create=True)
    assert lock is not None  # a folder made just now
    path = staging / run
    os.rename(pending, path)
    return path, lock


def _remove_if_stale(path: Path) -> bool:
    """Delete the run folder ``path`` unless a live process holds it; whether it was deleted."""
    lock = None if _in_use(path) else _try_lock(path, create=True)
    if lock is None:
        return False
    try:  # deleted while holding its lock, so a concurrent --resume cannot claim it meanwhile
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(lock)
    return True


def _in_use(path: Path) -> bool:
    """Whether a live process is writing the run folder ``path``.

    The lock decides: a PID means nothing across PID namespaces (containers sharing a volume,
    hosts on NFS) and may belong to an unrelated process after reuse. Only folders written
    before locks existed (no lock file) fall back to the PID in their name.
    """
    if path in _ACTIVE:
        return True
    if (path / LOCK).is_file():
        lock = _try_lock(path)
        if lock is None:
            return True
        os.close(lock)
        return False
    pid = path.name.rpartition("-")[2]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    return pid_alive(int(pid))


def _try_lock(path: Path, create: bool = False) -> int | None:
    """An fd holding ``path/.lock`` exclusively, or None if another process holds it."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path / LOCK, flags, 0o644)
    except FileNotFoundError:
        return None  # the folder went away meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EWOULDBLOCK: held
        os.close(fd)
        return None
    return fd
