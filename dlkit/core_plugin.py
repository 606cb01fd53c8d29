"""The core's own registrations: the supervised trainer, the data sets and file loaders, and the
classification and regression tasks.

Written as any plugin would be; dlkit registers it before the entry-point plugins.
"""

from __future__ import annotations

from importlib import import_module

from dlkit import hookimpl
from dlkit.training import supervised_options


def _lazy(path: str):
    """The function ``MODULE:ATTR``, imported on its first call (the modules need numpy or torch;
    ``dlkit --help`` needs neither)."""
    module, _, attr = path.partition(":")

    def call(*args, **kwargs):
        return getattr(import_module(module), attr)(*args, **kwargs)

    call.__doc__ = f"{module}.{attr}"
    call.__name__ = attr
    return call


@hookimpl
def register_trainers(register):
    register("supervised", _lazy("dlkit.training.supervised:fit"), defaults=supervised_options.DEFAULTS, distributed=True,
             description="minibatch training on the task's loss with early stopping")


@hookimpl
def register_datasets(register):
    register("digits", _lazy("dlkit.data.builtin:load_digits"), kind="image",
             description="UCI handwritten digits bundled with scikit-learn (1,797 8x8 images, 10 classes)")
    register("iris", _lazy("dlkit.data.builtin:load_iris"), kind="tabular",
             description="iris flowers bundled with scikit-learn (150 rows, 4 features, 3 classes)")
    register("wine", _lazy("dlkit.data.builtin:load_wine"), kind="tabular",
             description="UCI wine bundled with scikit-learn (178 rows, 13 features, 3 classes)")
    register("diabetes", _lazy("dlkit.data.builtin:load_diabetes"), kind="tabular",
             description="diabetes progression bundled with scikit-learn (442 rows, 10 features; regression)")
    register("blobs", _lazy("dlkit.data.builtin:load_blobs"), kind="tabular", description="synthetic separable tabular data (tests)")
    register("waves", _lazy("dlkit.data.builtin:load_waves"), kind="sequence", description="synthetic sine sequences (tests)")
    register("csv", _lazy("dlkit.data.files:load_csv"), suffixes=(".csv", ".tsv"), kind="tabular",
             description="CSV/TSV of numeric features and a label column (data.target, data.missing)")
    register("npz", _lazy("dlkit.data.files:load_npz"), suffixes=(".npz",), description="NumPy .npz with arrays x and y")
    register("image-folder", _lazy("dlkit.data.files:load_image_folder"), directory=True, kind="image",
             description="a folder with one sub-folder of images per class")


@hookimpl
def register_tasks(register):
    register("classification", _lazy("dlkit.tasks.classification:metrics"), output="logits", target_dtype="int64",
             loss=_lazy("dlkit.tasks.classification:loss"), score="accuracy", higher_is_better=True,
             batch_score=_lazy("dlkit.tasks.classification:batch_score"), export=_lazy("dlkit.tasks.classification:export"),
             describe=_lazy("dlkit.tasks.classification:describe"), quality=_lazy("dlkit.tasks.classification:quality"),
             scores=("probabilities", "logits"),
             description="one label per sample: cross-entropy, accuracy")
    register("regression", _lazy("dlkit.tasks.regression:metrics"), output="prediction", target_dtype="float32",
             loss=_lazy("dlkit.tasks.regression:loss"), score="rmse", higher_is_better=False,
             export=_lazy("dlkit.tasks.regression:export"), describe=_lazy("dlkit.tasks.regression:describe"),
             quality=_lazy("dlkit.tasks.regression:quality"),
             description="one or more numbers per sample: mean squared error on standardised targets, RMSE, MAE, R2")
