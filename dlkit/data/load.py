"""Data sets: numpy splits, the built-in sets, loaders for user files, and ``load_dataset``."""

from __future__ import annotations

from pathlib import Path


from dlkit.errors import InputError
from dlkit.data.dataset import Dataset, check_finite



def load_dataset(source: str, options: dict | None = None, seed: int = 0) -> Dataset:
    """Load ``source``: a registered data set name, or a path a registered loader reads."""
    from dlkit.plugins import get_registry

    registry = get_registry()
    options = dict(options or {})
    names = registry.names("dataset")
    if source in names:
        spec = registry.dataset(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(
                f"--data {source!r}: no such file or folder, and not a registered data set ({', '.join(names)})"
            )
        candidates = [
            s for s in registry.all("dataset")
            if (s.directory and path.is_dir()) or (path.is_file() and path.suffix.lower() in s.suffixes)
        ]
        if not candidates:
            raise InputError(f"--data {source}: no loader reads {'folders' if path.is_dir() else repr(path.suffix)} files")
        spec = candidates[0]
    ds = spec.load(source, options, seed)
    wanted = options.get("targets")
    if wanted is not None and ds.targets != wanted:
        raise InputError(f"--data {source}: loader {spec.name!r} gave {ds.targets} as targets, the task needs {wanted}")
    ds.source = {"source": source if source in names else str(Path(source).resolve()),
                 "loader": spec.name, "options": options, "seed": seed}
    check_finite(ds, source)
    from dlkit.data.input_stats import input_stats

    # What the inputs look like, recorded by every model trained on them, so that predict can warn
    # about an input that is nothing like them.
    ds.input_spec.setdefault("stats", input_stats(ds.x_train, ds.kind))
    return ds


