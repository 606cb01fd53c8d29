"""How many compute threads torch and onnxruntime use: ``--threads``, ``$DLKIT_THREADS``, or the cores
this process may run on.

torch's own default is every core the machine has, whatever the process is allowed or how many
other processes share them: on a loaded 2-core machine that made CNN training 14x slower. The
default here is the cores in the process's CPU affinity mask (``os.sched_getaffinity``: what
``taskset``, cgroups' cpusets and container limits leave), divided among the data-parallel
processes of one machine. Never imports torch itself: callers below torch (infer, the CLI) use it.
"""

from __future__ import annotations

import os
import sys

from dlkit.errors import InputError

ENV = "DLKIT_THREADS"
# Read by OpenMP/MKL when torch starts its pool: set them before torch is imported, or the pool
# is sized by the machine before set_num_threads can shrink it.
POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None = None) -> int:
    """``threads`` if given, else ``$DLKIT_THREADS``, else the available cores shared among the
    processes of one torchrun machine (``LOCAL_WORLD_SIZE``)."""
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise InputError(f"--threads must be a whole number of at least 1, got {threads!r}")
        return threads
    text = os.environ.get(ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise InputError(f"${ENV} must be a whole number of at least 1, got {text!r}")
        return int(text)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, available_cores() // processes)


def use_threads(threads: int | None = None) -> int:
    """Resolve the thread count and apply it to torch: through the environment when torch is not
    imported yet (its pool starts at that size), with ``torch.set_num_threads`` when it is.
    Returns the count."""
    n = resolve_threads(threads)
    for name in POOL_ENV:
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    return n
