"""The supervised trainer: resume is bit-identical, divergence keeps the last good checkpoint,
early stopping, zero-padded shifts, and atomic artifacts that are never pickled."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from dlkit.errors import DlkitError, InputError
from dlkit.store.atomic import atomic_path, write_json
from dlkit.store.recipe import Recipe
from dlkit.store.repository import ModelRepository
from dlkit.store.weights import load_tensors, save_tensors
from dlkit.testing import run_cli
from dlkit.training.callbacks import Callback
from dlkit.training.loop import TrainingDiverged
from dlkit.training.run import CHECKPOINT, train
from dlkit.training.state import BackgroundWriter, load_train_state, save_train_state
from dlkit.training.supervised import evaluate_arrays, random_shift

ROOT = Path(__file__).resolve().parents[1]
# A small CNN on digits that uses every source of randomness the trainer must restore on resume:
# dropout (torch's global RNG), shuffling and shift augmentation (the per-epoch generator), batch
# norm statistics, AdamW moments and the cosine schedule.
SMALL_CNN = {"channels": [4], "convs_per_block": 1, "hidden": 16, "dropout": 0.25}
SMALL_TRAIN = {"epochs": 2, "batch_size": 128, "augment": 1, "patience": 0}


def recipe(**train_options) -> Recipe:
    return Recipe(arch="cnn", name="small", seed=7, model=dict(SMALL_CNN), train={**SMALL_TRAIN, **train_options})


class InterruptAfter(Callback):
    """Ctrl-C at the end of epoch ``k`` (after its metrics are logged, before its checkpoint)."""

    def __init__(self, k: int):
        self.k = k

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.k:
            raise KeyboardInterrupt


class PoisonWeights(Callback):
    """Make the loss NaN from the second step of epoch ``k`` on, as a diverging run would."""

    def __init__(self, k: int):
        self.k = k

    def on_step_end(self, trainer, step, logs):
        if trainer.epoch == self.k:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def staged_runs(repo: ModelRepository, name: str) -> list[Path]:
    staging = repo.root / name / ".staging"
    return sorted(staging.iterdir()) if staging.is_dir() else []


def metric_lines(version) -> list[dict]:
    return [json.loads(line) for line in (version.path / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    straight = train(recipe(), ModelRepository(tmp_path / "a"), quiet=True)

    repo = ModelRepository(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(recipe(), repo, quiet=True, callbacks=[InterruptAfter(2)])
    assert repo.names() == [], "an interrupted run must not look like a version"
    (run,) = staged_runs(repo, "small")
    _, state = load_train_state(run / CHECKPOINT)
    assert state["epoch"] == 1  # epoch 2 was interrupted before its checkpoint: it is redone

    resumed = train(recipe(), repo, resume=True, quiet=True)
    assert resumed.version.ref == "small:1" and staged_runs(repo, "small") == []
    a, b = load_tensors(straight.version.weights_path), load_tensors(resumed.version.weights_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between the straight and the resumed run"
    assert resumed.metrics["test_accuracy"] == straight.metrics["test_accuracy"]

    lines, expected = metric_lines(resumed.version), metric_lines(straight.version)
    assert [m["epoch"] for m in lines] == [1, 2]  # one line per epoch, the redone one once
    for got, want in zip(lines, expected):
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}
    png = resumed.version.path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (resumed.version.path / CHECKPOINT).exists() and not (resumed.version.path / "recipe.json").exists()


def test_resume_without_an_interrupted_run_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="no interrupted run of 'small'"):
        train(recipe(), ModelRepository(tmp_path / "models"), resume=True, quiet=True)
    assert not (tmp_path / "models").exists()


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    mlp = Recipe(arch="mlp", name="small", data={"source": "blobs"}, model={"hidden": [8]},
                 train={"epochs": 3, "patience": 0})
    with pytest.raises(TrainingDiverged) as info:
        train(mlp, repo, quiet=True, callbacks=[PoisonWeights(2)])
    assert isinstance(info.value, DlkitError) and not isinstance(info.value, InputError)
    assert re.search(r"loss became nan in epoch 2; stopped\. .*checkpoint \(epoch 1\) is kept", str(info.value))
    assert repo.names() == []
    (run,) = staged_runs(repo, "small")
    tensors, state = load_train_state(run / CHECKPOINT)
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())

    resumed = train(mlp, repo, resume=True, quiet=True)  # continues from epoch 1
    assert [m["epoch"] for m in metric_lines(resumed.version)] == [1, 2, 3]
    assert all(torch.isfinite(t).all() for t in load_tensors(resumed.version.weights_path).values())


def test_divergence_in_the_first_epoch_keeps_nothing_and_exits_1(tmp_path):
    # A learning rate of 1e30 overflows to inf within the first steps: a real diverging run.
    root = tmp_path / "models"
    result = run_cli("train", "mlp", "--data", "blobs", "--lr", "1e30", "--epochs", "2", "--set", "hidden=[8]",
                     "--repo", root, "--json", expect=1)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became nan in epoch 1; stopped.") and "nothing is kept" in last
    assert result.stdout == "" and not root.exists()


def test_early_stopping_restores_the_best_epoch(tmp_path):
    # min_delta larger than any improvement: every epoch after the first counts as bad.
    result = train(Recipe(arch="mlp", name="es", data={"source": "blobs"}, model={"hidden": [8]},
                          train={"epochs": 10, "patience": 2, "min_delta": 100.0, "batch_size": 32}),
                   ModelRepository(tmp_path / "models"), quiet=True)
    assert (result.metrics["epochs"], result.metrics["best_epoch"], result.metrics["stopped_early"]) == (3, 1, True)
    lines = metric_lines(result.version)
    assert len(lines) == 3
    from dlkit.data.load import load_dataset
    from dlkit.training.build import load_model

    model, _ = load_model(result.version)
    ds = load_dataset("blobs")
    assert evaluate_arrays(model, ds.x_val, ds.y_val)["loss"] == pytest.approx(lines[0]["val_loss"], rel=1e-5)


@pytest.mark.parametrize("options", [
    # lr given: mlp's own default (2e-3, models/mlp.toml's) is not the trainer's 1e-3
    {"optimizer": "sgd", "schedule": "step", "step_size": 1, "gamma": 0.5, "lr": 1e-3},
    {"optimizer": "adam", "schedule": "none", "clip_grad": 1.0, "label_smoothing": 0.1},
    {"amp": True, "deterministic": True, "weight_decay": 0.0},
], ids=["sgd-step", "adam-clip-smoothing", "amp-deterministic"])
def test_trainer_options(options, tmp_path):
    result = train(Recipe(arch="mlp", name="opt", data={"source": "blobs"}, model={"hidden": [16]},
                          train={"epochs": 2, "patience": 0, **options}), ModelRepository(tmp_path / "models"),
                   quiet=True)
    assert result.version.meta["train"] == {**result.version.meta["train"], **options}
    lines = metric_lines(result.version)
    assert len(lines) == 2 and all(np.isfinite(m["train_loss"]) for m in lines)
    if options.get("schedule") == "step":
        assert [m["lr"] for m in lines] == pytest.approx([1e-3, 5e-4])
    assert not torch.are_deterministic_algorithms_enabled()  # deterministic mode is switched back off


# -- augmentation -----------------------------------------------------------------------------------
def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` (C, H, W) moved down by dy and right by dx, zeros coming in."""
    out = np.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_random_shift_pads_with_zeros_and_never_wraps():
    x = torch.arange(1, 2 * 5 * 6 + 1, dtype=torch.float32).reshape(1, 2, 5, 6).repeat(64, 1, 1, 1)
    out = random_shift(x, 2, torch.Generator().manual_seed(0)).numpy()
    offsets = set()
    for sample in out:
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(sample, shifted(x[0].numpy(), dy, dx))]
        assert len(matches) == 1, "each output must be its input shifted with zero padding"
        offsets.add(matches[0])
    assert len(offsets) > 10 and (0, 0) in offsets  # the shifts vary, and include no shift
    again = random_shift(x, 2, torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(out, again)


# -- artifacts --------------------------------------------------------------------------------------
def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "meta.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "torn')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]

    save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(2)})
    mode = stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)  # readable like any file the user makes, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "w.safetensors"]


def test_training_state_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 4), "t": torch.randn(4, 3).t(), "step": torch.tensor(7.0),
               "empty": torch.zeros(0, 2), "count": torch.tensor(5), "rng": torch.get_rng_state(),
               "half": torch.randn(2, dtype=torch.bfloat16)}
    state = {"epoch": 3, "best": {"val_loss": float("inf")}}
    save_train_state(tmp_path / "c.safetensors", tensors, state)
    loaded, loaded_state = load_train_state(tmp_path / "c.safetensors")
    assert loaded_state == state and loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    save_tensors(tmp_path / "plain.safetensors", {"w": torch.ones(1)})
    with pytest.raises(InputError, match="not a dlkit training checkpoint"):
        load_train_state(tmp_path / "plain.safetensors")


def test_background_writer_hands_errors_to_the_trainer(tmp_path):
    writer = BackgroundWriter()
    writer.submit(write_json, tmp_path / "a.json", {"v": 1})
    writer.wait()
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    writer.submit(write_json, tmp_path / "missing" / "\0bad.json", {})  # an impossible path
    with pytest.raises(ValueError):
        writer.wait()
    writer.submit(write_json, tmp_path / "missing" / "\0bad.json", {})
    writer.wait(raise_errors=False)  # a run that failed already keeps its own error
    writer.wait()


def test_a_version_folder_holds_only_finished_artifacts(tmp_path):
    result = train(Recipe(arch="mlp", name="files", data={"source": "blobs"}, model={"hidden": [8]},
                          train={"epochs": 1}), ModelRepository(tmp_path / "models"), quiet=True)
    assert sorted(p.name for p in result.version.path.iterdir()) == \
        ["curves.png", "meta.json", "metrics.jsonl", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "models").rglob("*")) == \
        sorted(["files", "1", "curves.png", "meta.json", "metrics.jsonl", "model.safetensors"])
    meta = result.version.meta
    for key in ("arch", "hparams", "input_spec", "labels", "data", "metrics", "seed", "versions", "train"):
        assert key in meta, key
    assert {"torch", "numpy", "python", "dlkit"} <= set(meta["versions"])


def test_nothing_is_pickled():
    """Artifacts are safetensors and JSON: no pickle, and no torch.load without weights_only=True."""
    offenders = []
    for path in sorted([*(ROOT / "dlkit").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((.*)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
        if re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M):
            offenders.append(f"{path.relative_to(ROOT)}: imports a pickler")
        if "allow_pickle=True" in text:
            offenders.append(f"{path.relative_to(ROOT)}: allow_pickle=True")
    assert offenders == []


def test_a_callback_that_is_not_a_dlkit_callback_is_refused_by_name(repo):
    """The loop calls every event and checkpoints each callback's state: a duck-typed object
    failed at its first checkpoint with "'X' object has no attribute 'state_key'"."""

    class Timer:
        def on_epoch_end(self, trainer, epoch, logs): ...

    with pytest.raises(TypeError, match="callbacks must subclass dlkit.Callback, got Timer"):
        train(Recipe(arch="mlp", name="typed", train={"epochs": 1}), repo, quiet=True, callbacks=[Timer()])
