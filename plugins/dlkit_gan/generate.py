"""``dlkit generate``: images from an exported generator through onnxruntime (no torch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dlkit import InputError

from .grid import class_rows, save_grid

BATCH = 512


def parse_label(value: str | int, version) -> int:
    """A class given by name (``cat``, ``3``) or index, checked against the model's labels."""
    names = [str(n) for n in version.meta.get("labels") or []]
    text = str(value).strip()
    if text in names:
        return names.index(text)
    shown = ", ".join(names) if len(names) <= 20 else f"{', '.join(names[:20])}, ..."
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise InputError(f"--label {text}: model {version.ref} has {len(names)} classes ({shown})")


def generate(version, n: int = 64, label: str | int | None = None, seed: int = 0,
             out: str | Path | None = "generated.png", npy: str | Path | None = None,
             provider: str = "auto") -> dict:
    """Run ``version``'s exported generator: ``n`` images as a PNG grid and/or a .npy array.

    Conditional models draw every class in turn (one grid row per class) unless ``label`` asks
    for one. The same ``seed`` gives the same images.
    """
    meta = version.meta
    if meta.get("task", "classification") != "generation":
        raise InputError(f"model {version.ref} is a {meta.get('task', 'classification')} model "
                         f"(arch {meta.get('arch')!r}); dlkit generate needs a generator such as a gan")
    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}")
    conditional = bool((meta.get("hparams") or {}).get("conditional"))
    names = [str(v) for v in meta.get("labels") or []]
    if label is not None and not conditional:
        raise InputError(f"--label {label}: model {version.ref} is unconditional (it was trained without labels)")
    index = parse_label(label, version) if label is not None else None
    if not version.has_onnx():
        raise InputError(f"model {version.ref} has no model.onnx: run `dlkit export onnx {version.ref}` first")
    from dlkit import Session

    session = Session(version.onnx_path, provider)
    inputs = {i.name: i for i in session.inputs}
    if "noise" not in inputs or (conditional and "label" not in inputs):
        raise InputError(f"{version.onnx_path}: expected graph inputs noise{' and label' if conditional else ''}, "
                         f"found {', '.join(inputs)}")
    latent = inputs["noise"].shape[-1]
    if not isinstance(latent, int):
        latent = int(meta["hparams"]["latent"])
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, latent), dtype=np.float32)
    labels = None
    if conditional:
        labels = np.full(n, index, dtype=np.int64) if index is not None else class_rows(len(names), n)
    chunks = []
    for i in range(0, n, BATCH):
        feeds = {"noise": noise[i:i + BATCH]}
        if labels is not None:
            feeds["label"] = labels[i:i + BATCH].astype(inputs["label"].dtype)
        chunks.append(session.run(feeds, ["image"])["image"])
    images = np.concatenate(chunks).astype(np.float32)
    value_range = session.metadata.get("output_range") or (meta.get("input_spec") or {}).get("range") or [0.0, 1.0]
    result = {"model": version.name, "version": version.version, "n": n, "seed": seed,
              "label": names[index] if index is not None else None, "shape": list(images.shape),
              "range": [float(v) for v in value_range], "providers": session.providers,
              "out": None, "npy": None}
    if out:
        per_row = math.ceil(n / len(names)) if conditional and index is None else None
        save_grid(out, images, value_range, cols=per_row)
        result["out"] = str(Path(out))
    if npy:
        from dlkit import atomic_path

        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, images)
        result["npy"] = str(Path(npy))
    if labels is not None:
        result["labels"] = [names[i] for i in labels.tolist()]
    return result
