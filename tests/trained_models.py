"""The small trained models the session fixtures build (imported by tests by this module's name:
``from conftest import ...`` would find whichever folder's conftest.py pytest loaded first)."""

FAST = {"epochs": 2, "batch_size": 64, "patience": 0}
# name -> (arch, model hparams): small but real models on the real digits data.
TRAINED = {
    "mlp-digits": ("mlp", {"hidden": [64]}),
    "cnn-digits": ("cnn", {"channels": [8, 16], "hidden": 32}),
    "rnn-digits": ("rnn", {"hidden": 32, "cell": "lstm"}),
    "gru-digits": ("rnn", {"hidden": 32, "cell": "gru"}),
}
