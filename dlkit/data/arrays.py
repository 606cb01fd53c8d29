"""One safe reader for NumPy ``.npy`` and ``.npz`` files from outside.

A 1 MB ``.npz`` of deflated zeros inflates to gigabytes, and an ``.npy`` header can declare any
shape: sizes are checked from the zip directory (``ZipInfo.file_size``, which also bounds what
zipfile will inflate) and from each array's header before a byte of data is read. Pickled
objects are never loaded. The cap is ``DLKIT_MAX_ARRAY_BYTES`` (default 2 GiB) per file.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from dlkit.errors import InputError, first_line

DEFAULT_MAX_ARRAY_BYTES = 2 << 30


def max_array_bytes() -> int:
    """The cap on what one .npy/.npz file may hold once loaded (``DLKIT_MAX_ARRAY_BYTES``)."""
    raw = os.environ.get("DLKIT_MAX_ARRAY_BYTES", "")
    if not raw:
        return DEFAULT_MAX_ARRAY_BYTES
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InputError(f"DLKIT_MAX_ARRAY_BYTES must be a number of bytes, got {raw!r}")
    return int(raw)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """An ``.npy`` array, its header checked against the file size and the cap first."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _read_array(f, f"{path}", size, max_array_bytes())
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npy array ({first_line(exc)})") from None


def read_npz(path: str | os.PathLike, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (only ``keys`` when given; missing ones are left out)."""
    path = Path(path)
    limit = max_array_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            members = {i.filename[:-4]: i for i in archive.infolist() if i.filename.endswith(".npy")}
            chosen = [k for k in (keys if keys is not None else list(members)) if k in members]
            total = sum(members[k].file_size for k in chosen)
            if total > limit:
                raise InputError(f"{path}: its arrays inflate to {total:,} bytes (limit {limit:,}, "
                                 f"DLKIT_MAX_ARRAY_BYTES)")
            out = {}
            for key in chosen:
                info = members[key]
                with archive.open(info) as f:
                    out[key] = _read_array(f, f"{path}:{key}", info.file_size, limit)
            return out
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: encrypted members
        raise InputError(f"{path}: not a readable .npz file ({first_line(exc)})") from None


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names in an ``.npz`` (read from its directory only)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [i.filename[:-4] for i in archive.infolist() if i.filename.endswith(".npy")]
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({first_line(exc)})") from None


def _read_array(f: IO[bytes], where: str, available: int, limit: int) -> np.ndarray:
    """Read one array from ``f`` after checking its header: dtype, shape, size."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise InputError(f"{where}: unsupported .npy format version {version}")
    shape, fortran, dtype = readers[version](f, max_header_size=10_000)
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (pickled), which dlkit never loads")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limit:
        raise InputError(f"{where}: array of shape {shape} would take {nbytes:,} bytes "
                         f"(limit {limit:,}, DLKIT_MAX_ARRAY_BYTES)")
    if nbytes > available:
        raise InputError(f"{where}: header declares shape {shape} ({nbytes:,} bytes) but the file holds less")
    count = math.prod(shape)
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise InputError(f"{where}: truncated array data")
    array = np.frombuffer(data, dtype=dtype, count=count).copy() if count else np.empty(0, dtype=dtype)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
