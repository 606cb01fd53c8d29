"""dlkit-mlp: a multi-layer perceptron over flattened inputs (tabular data or images)."""

from dlkit import hookimpl

DEFAULTS = {
    "hidden": [256, 128],
    "activation": "relu",  # relu | gelu | tanh | silu
    "dropout": 0.2,
    "batch_norm": True,
}

# The supervised trainer's options where this architecture wants other values than the trainer's
# (models/mlp.toml uses the same ones, so `dlkit train mlp` trains as well as the recipe).
TRAIN_DEFAULTS = {"epochs": 40, "lr": 2e-3}


def build(hparams, input_spec, num_classes):
    from .model import MLP

    return MLP(input_spec["shape"], num_classes, **hparams)


@hookimpl
def register_models(register):
    register("mlp", build, input_kinds={"tabular", "image"}, defaults=DEFAULTS, train_defaults=TRAIN_DEFAULTS,
             task=["classification", "regression"],
             description="multi-layer perceptron over flattened inputs")
