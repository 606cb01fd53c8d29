"""dlkit-mlp: a multi-layer perceptron over flattened inputs (tabular data or images)."""

from dlkit import hookimpl

DEFAULTS = {
    "hidden": [256, 128],
    "activation": "relu",  # relu | gelu | tanh | silu
    "dropout": 0.1,
    "batch_norm": True,
}


def build(hparams, input_spec, num_classes):
    from .model import MLP

    return MLP(input_spec["shape"], num_classes, **hparams)


@hookimpl
def register_models(register):
    register("mlp", build, input_kinds={"tabular", "image"}, defaults=DEFAULTS, task=["classification", "regression"],
             description="multi-layer perceptron over flattened inputs")
