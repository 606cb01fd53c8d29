"""`dlkit train ARCH` with no recipe trains as well as the shipped recipe: the recipe's settings
are the architecture's defaults (model hparams, and trainer options through ``train_defaults``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlkit.errors import PluginError
from dlkit.store.recipe import read_recipe
from dlkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
SUPERVISED = ("mlp", "cnn", "rnn")


@pytest.mark.parametrize("arch", SUPERVISED)
def test_shipped_recipe_is_the_architectures_defaults(arch):
    recipe = read_recipe(ROOT / "models" / f"{arch}.toml")
    listed = run_cli("show-arch", arch, "--json").json()
    for section in ("model", "train"):
        differ = {k: (v, listed[section].get(k)) for k, v in getattr(recipe, section).items()
                  if listed[section].get(k) != v}
        assert differ == {}, f"models/{arch}.toml [{section}] (recipe, default): {differ}"


def test_train_arch_is_train_recipe(repo):
    """The short spelling and the recipe train the same run: same options, same weights' scores."""
    common = ["--epochs", "2", "--threads", "1", "--json"]
    short = run_cli("train", "rnn", "--data", "digits", "--name", "short", *common).json()
    long = run_cli("train", ROOT / "models" / "rnn.toml", "--name", "long", *common).json()
    metas = [repo.resolve(name).meta for name in ("short", "long")]
    assert metas[0]["hparams"] == metas[1]["hparams"]
    assert metas[0]["train"] == metas[1]["train"] and metas[0]["train"]["lr"] == 3e-3
    assert short["metrics"]["test_accuracy"] == long["metrics"]["test_accuracy"]


def test_train_defaults_must_be_the_trainers_options():
    from dlkit.plugins import get_registry
    from dlkit.registry import ModelSpec

    registry = get_registry()
    spec = ModelSpec(name="odd", build=lambda *a: None, input_kinds=frozenset({"image"}),
                     train_defaults={"epoks": 3}, plugin="odd-plugin")
    with pytest.raises(PluginError, match="odd-plugin.*epoks.*supervised"):
        spec.train_options(registry.trainer("supervised"))
    assert registry.model("cnn").train_options(registry.trainer("supervised"))["restore_best"] is False
