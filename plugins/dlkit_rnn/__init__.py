"""dlkit-rnn: LSTM or GRU over sequences (batch, time, features); images are read row by row."""

from dlkit import hookimpl

DEFAULTS = {
    "cell": "lstm",  # lstm | gru
    "hidden": 128,
    "layers": 1,
    "bidirectional": True,
    "dropout": 0.1,
}

# The supervised trainer's options where this architecture wants other values than the trainer's
# (models/rnn.toml uses the same ones, so `dlkit train rnn` trains as well as the recipe).
TRAIN_DEFAULTS = {"epochs": 40, "lr": 3e-3}


def build(hparams, input_spec, num_classes):
    from .model import RNN

    return RNN(input_spec, num_classes, **hparams)


@hookimpl
def register_models(register):
    register("rnn", build, input_kinds={"sequence", "image"}, defaults=DEFAULTS, train_defaults=TRAIN_DEFAULTS,
             task=["classification", "regression"],
             description="LSTM/GRU over sequences or image rows: classes or numbers (forecasting)")
