"""dlkit-cnn: a convolutional network for images of any size and channel count."""

from dlkit import hookimpl

DEFAULTS = {
    "channels": [32, 64],  # one conv block per entry
    "kernel": 3,
    "convs_per_block": 2,
    "pool": "max",  # max | avg | none: 2x2 pooling after each block while the image is >= 4 px
    "hidden": 128,  # classifier head width; 0 for a linear head
    "dropout": 0.25,
    "batch_norm": True,
    "residual": False,  # ResNet basic blocks: each block's convs plus a shortcut
}

# The supervised trainer's options where this architecture wants other values than the trainer's
# (models/cnn.toml uses the same ones): a fixed 40-epoch cosine schedule with shifts, keeping the
# final weights, because digits' 179 validation images are too few to pick an epoch by.
TRAIN_DEFAULTS = {"epochs": 40, "lr": 3e-3, "augment": 1, "patience": 0, "restore_best": False}


def build(hparams, input_spec, num_classes):
    from .model import CNN

    return CNN(input_spec["shape"], num_classes, **hparams)


@hookimpl
def register_models(register):
    register("cnn", build, input_kinds={"image"}, defaults=DEFAULTS, train_defaults=TRAIN_DEFAULTS,
             task=["classification", "regression"],
             description="convolutional network (conv blocks or, residual = true, ResNet blocks; pooling, "
                         "global average head)")
