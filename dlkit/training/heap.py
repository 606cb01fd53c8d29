"""Giving the C heap's freed pages back to the operating system during long evaluations.

Evaluating a streamed split allocates and frees a few MiB per batch (the decoded rows, their
float32 copy, each layer's activations). Once training has freed a larger block, glibc serves
blocks of that size from its heap instead of fresh mappings (its dynamic mmap threshold), and
keeps what they free: measured on 50,000 64x64 images, one pass over a 5,000-image validation
split left the process 170-370 MiB larger, growing with the split, although nothing held the
memory (``malloc_trim`` gave all of it back). :func:`trim_heap` every few batches keeps the
process at its training size, as Dask's workers do; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

TRIM_EVERY = 8  # evaluation batches between trims: a bounded few batches' worth of freed blocks


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc's ``malloc_trim(0)``); False where unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
