"""Safe, atomic persistence: safetensors for tensors, JSON for everything else, never pickle."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it in.

    On any error the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # The writer's pid is in the name, so a later write can tell a killed writer's leftover
    # from a file another live process is still writing.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and some writers (safetensors) replace the file with a 0600 one of
        # their own: set the mode last, so artifacts read like any file the user creates.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed one is an InputError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in metrics and specs
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomically write torch tensors with safetensors (contiguous copies, shared storage split)."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory (tied weights): those are saved as copies.
    # Counted once, not per tensor: a training checkpoint holds hundreds of tensors every epoch.
    owners = Counter(v.untyped_storage().data_ptr() for v in tensors.values())
    clean = {k: v.detach().contiguous().clone() if owners[v.untyped_storage().data_ptr()] > 1 else v.detach().contiguous()
             for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Read torch tensors written by :func:`save_tensors`; corrupt files are an InputError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None


def load_weights(module, path: str | os.PathLike) -> None:
    """Load safetensors weights into a module; a shape or key mismatch names the tensor."""
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"{path}: weights do not fit the model ({' '.join(first[:3])})") from None


# -- training state (resume) -------------------------------------------------------------------
# One safetensors file holds every tensor of a training run (weights, optimizer moments, RNG
# state) and, in its string metadata, the JSON rest (epoch, history, scheduler). A single
# atomic rename then moves the whole state at once: never weights from one epoch beside
# counters from another. The tensors are packed into one flat tensor per dtype, with an index
# in the metadata: safetensors' per-tensor cost on hundreds of small tensors (every parameter,
# its best copy and two optimizer moments) was most of an epoch's overhead for small models.
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
    return packed, {STATE_KEY: json.dumps(state, default=_json_default), INDEX_KEY: json.dumps(index)}


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
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name="dlkit-checkpoint")
        self._thread.start()

    def wait(self, raise_errors: bool = True) -> None:
        """Block until the write in flight, if any, is on disk."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_errors:
            raise error


def load_train_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read what :func:`save_train_state` wrote: (tensors, state)."""
    from safetensors import safe_open

    path = Path(path)
    tensors = load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = json.loads(metadata[STATE_KEY])
        if INDEX_KEY in metadata:  # packed (see above); older checkpoints hold the tensors as they are
            index = json.loads(metadata[INDEX_KEY])
            tensors = {name: tensors[f"packed.{dtype}"][start:start + _numel(shape)].reshape(shape).clone()
                       for name, (dtype, start, shape) in index.items()}
    except (KeyError, ValueError, RuntimeError):
        raise InputError(f"{path}: not a dlkit training checkpoint") from None
    return tensors, state


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
