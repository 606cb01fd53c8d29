"""Distributed data-parallel training with torch.distributed: gloo on CPU, NCCL on GPU.

dlkit reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so
both ``dlkit train ... --nproc N`` (which starts torchrun itself) and
``torchrun --nproc-per-node N -m dlkit train ...`` (one node or many) work. Only rank 0 writes
to the repository; checkpoints hold unwrapped weights, so a run resumes on another world size.
"""

from __future__ import annotations

import os
import subprocess
import sys


def env_world_size() -> int:
    """The world size torchrun announced, 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes; returns whether this call created it."""
    import torch
    import torch.distributed as dist

    if env_world_size() <= 1 or dist.is_initialized():
        return False
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def local_device(device: str) -> str:
    """Each rank on a GPU of its own: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device == "cuda" and env_world_size() > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every rank (as bytes in a tensor: no pickling)."""
    import torch
    import torch.distributed as dist

    rank, world = rank_and_world()
    if world == 1:
        return text
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    data = torch.tensor(list(text.encode()) if rank == 0 else [], dtype=torch.uint8)
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if rank == 0:
        buf.copy_(data)
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def all_reduce_sum(*tensors) -> None:
    """Sum tensors across ranks in place (no-op when not distributed)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        for t in tensors:
            dist.all_reduce(t)


def barrier() -> None:
    """Wait until every rank gets here (no-op when not distributed)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, args: list[str]) -> int:
    """Run ``dlkit ARGS`` under torchrun with ``nproc`` processes on this machine.

    Safe-path mode for the launcher and every rank (``-P``; ``-I`` before Python 3.11): ``-m``
    would otherwise put the current folder first on ``sys.path`` and run a stray ``dlkit.py``
    or ``torch.py`` from it. The rendezvous store and the process group bind to loopback: a
    single-node run has nothing to say to other machines.
    """
    safe = ["-P"] if sys.version_info >= (3, 11) else ["-I"]
    port = _free_loopback_port()
    cmd = [sys.executable, *safe, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=dlkit-{os.getpid()}",
           "--local-addr=127.0.0.1", "--no-python", sys.executable, *safe, "-m", "dlkit", *args]
    # PYTHONFAULTHANDLER: a rank killed by a native crash (SIGABRT, SIGSEGV) prints its Python
    # stack, where torchrun's summary says only "Signal 6 received".
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONFAULTHANDLER": "1",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    return subprocess.call(cmd, env=env)


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
