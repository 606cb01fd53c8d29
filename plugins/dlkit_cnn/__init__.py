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
}


def build(hparams, input_spec, num_classes):
    from .model import CNN

    return CNN(input_spec["shape"], num_classes, **hparams)


@hookimpl
def register_models(register):
    register("cnn", build, input_kinds={"image"}, defaults=DEFAULTS, task=["classification", "regression"],
             description="convolutional network (conv blocks, pooling, global average head)")
