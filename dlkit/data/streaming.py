"""Data that does not fit in memory: rows of a memory-mapped file, decoded in parallel once and cached.

An image folder too large to hold as float32 arrays (``data.stream``, default: above
:data:`STREAM_BYTES`) is decoded by worker processes into one uint8 ``.npy`` file under the
repository's ``.cache/`` folder, keyed by the files' names, sizes and modification times (a changed
folder gets a new cache, the old one is removed). The data set's splits are then :class:`RowArray`
views of that file: indexing one reads and scales only the rows asked for, so training holds a
bounded window of batches (the trainer feeds it through a ``torch.utils.data.DataLoader`` with
workers), whatever the data set's size.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import mmap
import os
import weakref
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dlkit.errors import InputError

STREAM_BYTES = 2 * 1024 ** 3  # float32 bytes above which an image folder streams from its cache
_CACHE_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("dlkit_cache_dir", default=None)


@contextlib.contextmanager
def cache_dir(path: Path) -> Iterator[None]:
    """Use ``path`` for decoded-data caches while the block runs (training sets the repository's)."""
    token = _CACHE_DIR.set(Path(path))
    try:
        yield
    finally:
        _CACHE_DIR.reset(token)


def current_cache_dir() -> Path:
    """The cache folder: the one set by :func:`cache_dir`, else ``$DLKIT_REPO/.cache`` (``./models/.cache``)."""
    from dlkit.store.repository import default_root

    return _CACHE_DIR.get() or default_root() / ".cache"


class RowArray:
    """Rows ``index`` of a (memory-mapped) array, as float32 divided by ``divisor`` (and taken
    from 1 with ``invert``) when read: uint8 pixels / 255, the values the in-memory path computes.

    Supports what dlkit does with a split: ``len``, ``shape``, ``dtype``, ``x[i]``, ``x[a:b]`` and
    ``x[indices]`` (each returns a numpy array of just those rows), :meth:`take` (a lazy view of
    some rows) and ``np.asarray(x)`` (everything, for small splits).
    """

    def __init__(self, base: np.ndarray, index: np.ndarray | None = None, divisor: float = 1.0,
                 invert: bool = False):
        self.base = base
        self.index = np.arange(len(base)) if index is None else np.asarray(index, dtype=np.int64)
        self.divisor = divisor
        self.invert = invert  # 1 - value: dark drawings on white paper (data.invert)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = self.index[key]
        if np.ndim(rows) == 0:
            return self._read(np.array([rows]))[0]
        return self._read(rows)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        # Sorted reads touch the file in order; the result keeps the order asked for.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.base.shape[1:]), dtype=np.float32)
        out[order] = read_rows(self.base, rows[order])
        if self.divisor != 1.0:
            out /= np.float32(self.divisor)
        if self.invert:
            np.subtract(np.float32(1.0), out, out=out)
        return out

    def take(self, rows: np.ndarray) -> RowArray:
        """A view of some of these rows (no data read)."""
        return RowArray(self.base, self.index[np.asarray(rows, dtype=np.int64)], self.divisor, self.invert)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(self.index)
        return out if dtype is None else out.astype(dtype)


def read_rows(base: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``base[rows]`` (``rows`` sorted). From a whole file's memory map the rows are read with
    ``pread`` rather than through the map: pages touched through a map stay in the process's
    resident set (and its PSS) until it unmaps, so a process that had read every row would look as
    large as the cache file; read, they are only the kernel's page cache, and the process holds
    the rows it asked for."""
    if not (isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap) and base.flags.c_contiguous
            and base.filename):
        return base[rows]
    out = np.empty((len(rows), *base.shape[1:]), dtype=base.dtype)
    row_bytes = out.itemsize * int(np.prod(base.shape[1:], dtype=np.int64))
    fd = _descriptor(base)
    i = 0
    while i < len(rows):  # one read per run of consecutive rows
        j = i + 1
        while j < len(rows) and rows[j] == rows[j - 1] + 1:
            j += 1
        buf = memoryview(out[i:j].reshape(-1).view(np.uint8))
        at, done = base.offset + int(rows[i]) * row_bytes, 0
        while done < len(buf):
            n = os.preadv(fd, [buf[done:]], at + done)
            if n <= 0:
                raise OSError(f"{base.filename}: short read at byte {at + done}")
            done += n
        i = j
    return out


_FDS: dict[int, int] = {}  # id(a memmap's mmap) -> a descriptor of its file, closed with the map


def _descriptor(base: np.memmap) -> int:
    """A read-only descriptor of the file ``base`` maps, kept open while the map lives (``pread``
    shares no file position, so a forked DataLoader worker may use the one it inherits). Keyed by
    the map, not the path: a cache file replaced on disk (the folder changed) gets a descriptor of
    its own, never the old file's."""
    key = id(base.base)
    fd = _FDS.get(key)
    if fd is None:
        fd = _FDS[key] = os.open(str(base.filename), os.O_RDONLY)
        weakref.finalize(base.base, _close, key)
    return fd


def _close(key: int) -> None:
    fd = _FDS.pop(key, None)
    if fd is not None:
        os.close(fd)


def take_rows(x: Any, rows: np.ndarray) -> Any:
    """``x[rows]``: a copy for an in-memory array, a lazy view for a :class:`RowArray`."""
    return x.take(rows) if isinstance(x, RowArray) else x[rows]


def is_streaming(x: Any) -> bool:
    return isinstance(x, RowArray)


def folder_key(root: Path, files: list[Path], size: tuple[int, int], mode: str) -> str:
    """A digest of what the decoded cache depends on: names, sizes, mtimes, target size, mode."""
    h = hashlib.sha256(f"{size}|{mode}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decoded_cache(root: Path, files: list[Path], size: tuple[int, int], mode: str, workers: int) -> np.ndarray:
    """The folder's images as a read-only uint8 ``[N, C, H, W]`` memory map, decoded on first use."""
    folder = current_cache_dir()
    prefix = "images-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    path = folder / f"{prefix}-{folder_key(root, files, size, mode)}.npy"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{prefix}-*.npy"):  # the folder changed since: its old cache goes
            stale.unlink(missing_ok=True)
        channels = 3 if mode == "RGB" else 1
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), channels, size[1], size[0]))
        del out  # the workers write into the file; this process only created it
        try:
            chunks = [(str(tmp), [str(f) for f in files[i:i + 256]], i, size, mode) for i in range(0, len(files), 256)]
            if workers > 1 and len(chunks) > 1:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(_decode_chunk, chunks))
            else:
                for chunk in chunks:
                    _decode_chunk(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _decode_chunk(job: tuple) -> None:
    """Decode some images into rows of the cache file (runs in a worker process)."""
    from PIL import Image, UnidentifiedImageError

    tmp, paths, start, size, mode = job
    out = np.load(tmp, mmap_mode="r+")
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != tuple(size):
                    im = im.resize(tuple(size), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"{p}: cannot decode image ({exc})") from None
        out[start + i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
    out.flush()


def default_workers() -> int:
    """Decoding processes: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))
