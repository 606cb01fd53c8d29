"""The core's own registrations: the supervised trainer and the data sets and file loaders.

Written as any plugin would be; dlkit registers it before the entry-point plugins.
"""

from __future__ import annotations

from importlib import import_module

from dlkit import hookimpl
from dlkit.training import supervised_options


def _data(path: str):
    """A loader ``MODULE:ATTR`` of dlkit.data, imported on first call (it needs numpy; --help does not)."""
    module, _, attr = path.partition(":")

    def load(source, options, seed):
        return getattr(import_module(f"dlkit.data.{module}"), attr)(source, options, seed)

    load.__doc__ = f"dlkit.data.{module}.{attr}"
    return load


def _fit_supervised(run):
    """The ``supervised`` trainer (imports torch on first call)."""
    from dlkit.training.supervised import fit

    return fit(run)


@hookimpl
def register_trainers(register):
    register("supervised", _fit_supervised, defaults=supervised_options.DEFAULTS, distributed=True,
             description="minibatch cross-entropy training with early stopping")


@hookimpl
def register_datasets(register):
    register("digits", _data("builtin:load_digits"), kind="image",
             description="UCI handwritten digits bundled with scikit-learn (1,797 8x8 images, 10 classes)")
    register("blobs", _data("builtin:load_blobs"), kind="tabular", description="synthetic separable tabular data (tests)")
    register("waves", _data("builtin:load_waves"), kind="sequence", description="synthetic sine sequences (tests)")
    register("csv", _data("files:load_csv"), suffixes=(".csv", ".tsv"), kind="tabular",
             description="CSV/TSV of numeric features and a label column (data.target, data.missing)")
    register("npz", _data("files:load_npz"), suffixes=(".npz",), description="NumPy .npz with arrays x and y")
    register("image-folder", _data("files:load_image_folder"), directory=True, kind="image",
             description="a folder with one sub-folder of images per class")
