"""safetensors weights: save and load tensors, never pickle (torch is imported only when called)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from dlkit.errors import InputError
from dlkit.store.atomic import atomic_path


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomically write torch tensors with safetensors (contiguous copies, shared storage split)."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory (tied weights): those are saved as copies.
    # Counted once, not per tensor: a training checkpoint holds hundreds of tensors every epoch.
    owners = Counter(v.untyped_storage().data_ptr() for v in tensors.values())
    clean = {k: (v.detach().contiguous().clone() if owners[v.untyped_storage().data_ptr()] > 1
                 else v.detach().contiguous())
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
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError / OSError variants
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None


def load_weights(module, path: str | os.PathLike) -> None:
    """Load safetensors weights into a module; a shape or key mismatch names the tensor."""
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"{path}: weights do not fit the model ({' '.join(first[:3])})") from None


