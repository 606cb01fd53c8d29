"""Making a model from another: one staged version with lineage, for every compressor.

Quantization, distillation, pruning and importers all publish a *new* model whose meta.json
says where it came from (``parent``, ``method``). :func:`derive` is the one way to do it: it
stages the version, lets the caller write its files into ``new.path``, merges what the new
model keeps from its parent with what the caller adds, and publishes it whole, or discards it
on any error, so the source is never touched and no half-made model is left behind.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlkit.errors import InputError
from dlkit.store.repository import ModelVersion, check_name

if TYPE_CHECKING:
    from dlkit.store.repository import ModelRepository

# What a derived model keeps from its parent's meta.json unless told otherwise: what it is and
# what it takes (not its files, metrics or lineage).
INHERITED = ("arch", "plugin", "task", "trainer", "hparams", "train", "seed", "input_spec", "labels",
             "num_classes", "data", "params")


@dataclass
class Derived:
    """A version being made: write files into :attr:`path`, add to :attr:`meta`."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    version: ModelVersion | None = None  # set once published


@contextmanager
def derive(repo: ModelRepository, parent: ModelVersion | None, method: str, name: str, *,
           inherit: tuple[str, ...] = INHERITED) -> Iterator[Derived]:
    """Stage a new model ``name`` made from ``parent`` by ``method``; publish it when the block ends.

    ``parent`` is None for a model brought in from outside (an import). The name is checked
    before anything is written and must differ from the parent's: a derived model is a new model.
    """
    check_name(name)
    if parent is not None and name == parent.name:
        raise InputError(f"--name {name!r} is the source model's name: a {method} model is a new model")
    for path in repo.clean_staging(name):
        print(f"dlkit: discarded the interrupted run in {path}", file=sys.stderr)
    staged = repo.stage(name)
    inherited = {k: parent.meta[k] for k in inherit if k in parent.meta} if parent is not None else {}
    new = Derived(staged.path, inherited)
    try:
        yield new
        lineage = {"name": parent.name, "version": parent.version} if parent is not None else None
        meta = {**new.meta, "parent": lineage, "method": method,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        meta.setdefault("versions", library_versions())
        new.version = staged.commit(meta)
    except BaseException:
        staged.discard()
        raise


def library_versions() -> dict[str, str]:
    """The versions a model was made with (torch's only when it is already imported: no import here)."""
    from dlkit import __version__

    versions = {"dlkit": __version__, "python": platform.python_version()}
    for module in ("torch", "numpy", "onnx", "onnxruntime"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return versions
