"""The example plugin's own tests: dlkit's conformance checks on what it registers.

The fixtures (``dlkit_repo``, ``dlkit_model``, ``dlkit_cli``) come from dlkit's pytest plugin,
installed with dlkit: nothing to import or configure.
"""

import pytest

from dlkit.testing import check_command, check_compressor, check_dataset, check_model

SMALL = {"channels": [8, 8]}


def test_registered(dlkit_registry):
    assert dlkit_registry.model("tcn").plugin == "example"
    assert dlkit_registry.trainer("focal").plugin == "example"
    assert dlkit_registry.compressor("sparsify").plugin == "example"
    assert dlkit_registry.dataset("chirps").plugin == "example"


@pytest.mark.dlkit_plugin("example")
def test_model_conforms(dlkit_model, dlkit_repo):
    # Build, a train step, a weights round trip, the focal trainer, ONNX parity, onnxruntime.
    check_model(dlkit_model, dlkit_repo, data="chirps", hparams=SMALL)


def test_dataset_conforms():
    ds = check_dataset("chirps", {"n": 90, "steps": 16})
    assert ds.input_spec["shape"] == [16, 1]


def test_sparsify_conforms(dlkit_repo, dlkit_cli):
    dlkit_cli("train", "tcn", "--data", "chirps", "--set", "channels=[8]", "--set", "data.n=90", "--epochs", "1")
    pruned = check_compressor("sparsify", dlkit_repo.resolve("tcn-chirps"), dlkit_repo, {"amount": 0.5})
    assert pruned.meta["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_command_conforms():
    check_command("sparsify")
