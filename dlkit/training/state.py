"""Resumable training state: every tensor and the JSON rest of a run in one atomic safetensors file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dlkit.errors import InputError
from dlkit.store.atomic import json_default, write_bytes
from dlkit.store.weights import load_tensors

# -- training state (resume) -------------------------------------------------------------------
# One safetensors file holds every tensor of a training run (weights, optimizer moments, RNG
# state) and, in its string metadata, the JSON rest (epoch, history, scheduler). A single
# atomic rename then moves the whole state at once: never weights from one epoch beside
# counters from another. The tensors are packed into one flat tensor per dtype, with an index
# in the metadata: safetensors' per-tensor cost on hundreds of small tensors (every parameter,
# its best copy and two optimizer moments) was most of an epoch's overhead for small models.
CHECKPOINT = "checkpoint.safetensors"  # a staged run's training state, kept for --resume
STATE_KEY = "dlkit_train_state"
INDEX_KEY = "dlkit_train_index"


def save_train_state(path: str | os.PathLike, tensors: dict, state: dict) -> None:
    """Atomically write a resumable training state."""
    write_train_state(path, *pack_train_state(tensors, state))


def write_train_state(path: str | os.PathLike, packed: dict, metadata: dict) -> None:
    """Atomically write what :func:`pack_train_state` returned (no torch computation: another
    thread may call it while training goes on)."""
    from safetensors.torch import save

    write_bytes(path, save(packed, metadata=metadata))


def pack_train_state(tensors: dict, state: dict) -> tuple[dict, dict]:
    """A snapshot of a training state, (packed tensors, metadata): copies, so the live tensors
    may change right after."""
    import torch

    groups: dict[str, list] = {}
    sizes: dict[str, int] = {}
    index: dict[str, list] = {}
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        index[name] = [dtype, sizes.get(dtype, 0), list(t.shape)]
        sizes[dtype] = sizes.get(dtype, 0) + t.numel()
        groups.setdefault(dtype, []).append(t.detach().to("cpu").reshape(-1))
    packed = {f"packed.{dtype}": torch.cat(parts) for dtype, parts in groups.items()}
    return packed, {STATE_KEY: json.dumps(state, default=json_default), INDEX_KEY: json.dumps(index)}


class BackgroundWriter:
    """Runs one write at a time beside the caller: a per-epoch checkpoint (serialise, fsync,
    rename) overlaps the next epoch's compute instead of stalling it. A write's error is raised
    by the next :meth:`submit` or :meth:`wait`."""

    def __init__(self) -> None:
        self._thread = None
        self._error: BaseException | None = None

    def submit(self, write, *args) -> None:
        """Wait for the previous write, then start ``write(*args)`` (its arguments must be
        snapshots the caller no longer changes)."""
        import threading

        self.wait()

        def run() -> None:
            try:
                write(*args)
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: handed to the training thread by wait()
                self._error = exc

        # Started before it is stored: a Ctrl-C between the two must not leave wait() joining a
        # thread that never started ("cannot join thread before it is started").
        thread = threading.Thread(target=run, name="dlkit-checkpoint")
        thread.start()
        self._thread = thread

    def wait(self, raise_errors: bool = True) -> None:
        """Block until the write in flight, if any, is on disk."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_errors:
            raise error


MAX_EPOCH = 10**6  # far beyond any real run; 10**30 in a crafted state would publish an untrained model


def load_train_state(path: str | os.PathLike, like: dict | None = None) -> tuple[dict, dict]:
    """Read what :func:`save_train_state` wrote: (tensors, state).

    A crafted or foreign file is one InputError naming the field: the counters must be
    numbers in range, and each tensor named in ``like`` (the live model's, by default none)
    must have that tensor's shape and dtype, before anything is loaded into the model.
    """
    from safetensors import safe_open

    path = Path(path)
    tensors = load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = json.loads(metadata[STATE_KEY])
        if INDEX_KEY in metadata:  # packed (see above); older checkpoints hold the tensors as they are
            tensors = _unpack(tensors, json.loads(metadata[INDEX_KEY]))
    except (KeyError, ValueError, RuntimeError, TypeError):
        raise InputError(f"{path}: not a dlkit training checkpoint") from None
    _check_state(path, state)
    for name, ref in (like or {}).items():
        got = tensors.get(name)
        if got is None:
            raise InputError(f"{path}: checkpoint has no tensor {name!r}")
        if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
            raise InputError(f"{path}: tensor {name!r} is {got.dtype} {list(got.shape)}, the model needs "
                             f"{ref.dtype} {list(ref.shape)}")
    return tensors, state


def _unpack(tensors: dict, index: dict) -> dict:
    out = {}
    for name, (dtype, start, shape) in index.items():
        flat = tensors[f"packed.{dtype}"]
        if not (isinstance(start, int) and start >= 0 and all(isinstance(d, int) and d >= 0 for d in shape)
                and start + _numel(shape) <= flat.numel()):
            raise ValueError(name)  # a slice outside the packed tensor: not ours
        out[name] = flat[start:start + _numel(shape)].reshape(shape).clone()
    return out


def _check_state(path: Path, state) -> None:
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a dlkit training checkpoint (state is not an object)")
    epoch, seconds = state.get("epoch"), state.get("seconds", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise InputError(f"{path}: epoch must be an integer from 0 to {MAX_EPOCH}, got {str(epoch)[:40]!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e12:
        raise InputError(f"{path}: seconds must be a non-negative number, got {str(seconds)[:40]!r}")
    for key in ("optimizers", "schedulers", "callbacks"):
        if not isinstance(state.get(key, {}), dict):
            raise InputError(f"{path}: {key} must be an object")


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def optimizer_to_flat(optimizer, prefix: str) -> tuple[dict, dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON."""
    import torch

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer, prefix: str, tensors: dict, state: dict) -> None:
    """Inverse of :func:`optimizer_to_flat`: restore the optimizer in place."""
    entries: dict[int, dict] = {}
    start = prefix + "."
    for name, value in tensors.items():
        if name.startswith(start):
            idx, key = name[len(start):].split(".", 1)
            entries.setdefault(int(idx), {})[key] = value
    for name, value in state["scalars"].items():
        idx, key = name.split(".", 1)
        entries.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})
