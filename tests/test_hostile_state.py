"""Issue 13, finding 14: crafted training state and recipe values are one clear line, exit 2,
and nothing is published."""

from __future__ import annotations

import pytest

from dlkit.store.recipe import Recipe
from dlkit.testing import run_cli
from dlkit.training.callbacks import Callback
from dlkit.training.run import CHECKPOINT, train
from dlkit.training.state import load_train_state, save_train_state


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 2:
            raise KeyboardInterrupt  # as Ctrl+C would: epoch 1's checkpoint is kept for --resume


@pytest.fixture
def interrupted(repo):
    """An interrupted run of ``m`` (3 epochs asked, epoch 1 checkpointed); its checkpoint path."""
    with pytest.raises(KeyboardInterrupt):
        train(Recipe(arch="mlp", name="m", model={"hidden": [16]}, train={"epochs": 3}), repo, quiet=True,
              callbacks=[StopAfterFirstEpoch()])
    (found,) = repo.interrupted("m", CHECKPOINT)
    return found.path / CHECKPOINT


def _tamper(path, tensors=None, **state):
    got_tensors, got_state = load_train_state(path)
    got_tensors.update(tensors or {})
    got_state.update(state)
    save_train_state(path, got_tensors, got_state)


def _transposed(path):
    tensors, _ = load_train_state(path)
    name = next(k for k, v in tensors.items() if k.startswith("model.") and v.ndim == 2)
    return {name: tensors[name].t().contiguous()}


def _wrong_dtype(path):
    tensors, _ = load_train_state(path)
    name = next(k for k in tensors if k.startswith("model."))
    return {name: tensors[name].double()}


@pytest.mark.parametrize("tamper, message", [
    (lambda p: _tamper(p, epoch="1"), "epoch must be an integer"),
    (lambda p: _tamper(p, epoch=10**30), "epoch must be an integer"),
    (lambda p: _tamper(p, seconds="x"), "seconds must be"),
    (lambda p: _tamper(p, _transposed(p)), "the model needs"),
    (lambda p: _tamper(p, _wrong_dtype(p)), "the model needs"),
    (lambda p: _tamper(p, optimizers={"model": {"param_groups": "x", "scalars": {}}}), "does not fit this run"),
])
def test_crafted_checkpoint_is_one_line_and_publishes_nothing(interrupted, repo, tamper, message):
    tamper(interrupted)
    out = run_cli("train", "mlp", "--name", "m", "--resume", expect=2)
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert repo.versions("m") == []
    assert interrupted.is_file()  # kept: the user may still want to look at it


@pytest.mark.parametrize("line, message", [
    ("name = 5", "name must be a string"),
    (f"seed = {2**63 - 1}", "seed must be an integer from 0"),
    ("seed = -1", "seed must be an integer from 0"),
    ("[data]\nseed = -1", "data.seed must be an integer from 0"),
    ('[data]\nseed = "7"', "data.seed must be an integer from 0"),
])
def test_bad_recipe_values_are_one_line(tmp_path, repo, line, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'arch = "mlp"\n{line}\n')
    out = run_cli("train", str(recipe), expect=2)
    assert message in out.stderr and "r.toml" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not repo.root.exists()


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--seed", str(2**40)], ["--set", "data.seed=-3"]])
def test_bad_seed_flags_are_one_line(repo, args):
    out = run_cli("train", "mlp", "--epochs", "1", *args, expect=2)
    assert "seed must be an integer from 0" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not repo.root.exists()
