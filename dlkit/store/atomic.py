"""Atomic files: a write lands whole or not at all (temporary file, fsync, rename); JSON helpers."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dlkit.errors import InputError

@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it in.

    On any error the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp_path = _temporary(path)
    try:
        yield tmp_path
        _settle(tmp_path, path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_together(files: list[tuple[Path, bytes | Path]]) -> None:
    """Publish several files as one step: (path, bytes) writes them, (path, temporary) moves a
    file already written beside ``path`` (by :func:`temporary_beside`) in.

    Every temporary is complete and fsynced before the first rename, so a full disk publishes
    none of them; the renames then follow the order given (put the record first: a crash
    between renames leaves a record without its file, never a file without its record).
    """
    temps: dict[Path, Path] = {path: data for path, data in files if isinstance(data, Path)}  # removed on failure
    try:
        for path, data in files:
            if not isinstance(data, Path):
                temps[path] = _temporary(path)
                temps[path].write_bytes(data)
        ordered = [(temps[path], path) for path, _ in files]
        for tmp, path in ordered:
            _settle(tmp, path)
        for tmp, path in ordered:
            os.replace(tmp, path)
        for folder in {path.parent for _, path in ordered}:
            fsync_dir(folder)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def temporary_beside(path: str | os.PathLike) -> Path:
    """An empty temporary next to ``path``, named so a later write removes it if its writer dies."""
    return _temporary(Path(path))


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # The writer's pid is in the name, so a later write can tell a killed writer's leftover
    # from a file another live process is still writing.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _settle(tmp: Path, path: Path) -> None:
    # mkstemp makes 0600, and some writers (safetensors) replace the file with a 0600 one of
    # their own: set the mode last, so artifacts read like any file the user creates.
    os.chmod(tmp, 0o666 & ~_umask())
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by writers that were killed mid-write."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty JSON."""
    write_bytes(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """Pretty JSON as dlkit stores it."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n").encode()


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed one is an InputError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:  # nested thousands deep: hostile, not a record dlkit wrote
        raise InputError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # an integer of 4301+ digits (int's str-conversion limit)
        raise InputError(f"{path}: not usable JSON ({str(exc)[:120]})") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a JSON file") from None


def json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in metrics and specs
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


