"""``dlkit train`` as a Python API: recipe in, a new model version in the repository out."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlkit import __version__
from dlkit.store.atomic import read_json, write_json
from dlkit.store.weights import save_tensors
from dlkit.errors import InputError
from dlkit.store.recipe import Recipe, check_options
from dlkit.registry import ModelSpec
from dlkit.store.repository import WEIGHTS, ModelRepository, ModelVersion

RECIPE_FILE = "recipe.json"
from dlkit.training.state import CHECKPOINT  # noqa: E402  (re-exported: trainers and tests use it)


@dataclass
class TrainRun:
    """What a trainer's ``fit`` receives."""

    model: Any  # torch.nn.Module
    spec: ModelSpec
    data: Any  # dlkit.data.Dataset
    config: dict
    seed: int
    workdir: Path
    resume: bool = False
    quiet: bool = False
    callbacks: list = field(default_factory=list)
    repo: ModelRepository | None = None  # where the result will land (e.g. to store helpers)


@dataclass
class TrainResult:
    """The new version and what it measured."""

    version: ModelVersion
    metrics: dict
    params: int
    target: str | None = None  # which column of a table was learnt, e.g. "target: species, 3 classes, ..."

    def as_dict(self) -> dict:
        out = {"model": self.version.name, "version": self.version.version,
               "path": str(self.version.path), "params": self.params, "metrics": self.metrics}
        if self.target:
            out["target"] = self.target
        return out


def default_name(arch: str, data_source: str) -> str:
    stem = Path(data_source).stem if ("/" in data_source or "." in data_source) else data_source
    return f"{arch}-{stem}".lower().replace(" ", "-")


def library_versions() -> dict:
    import numpy
    import torch

    return {"dlkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__}


def train(recipe: Recipe, repo: ModelRepository | None = None, *, resume: bool = False,
          quiet: bool = False, callbacks: list | None = None, threads: int | None = None) -> TrainResult | None:
    """Train ``recipe`` and publish the result as the next version of its model name.

    Bad input raises :class:`InputError` before anything is written. A run that fails after
    its first checkpoint leaves a staging folder that ``resume=True`` continues. Under torchrun
    every rank trains its shard and only rank 0 writes and returns the result (others: None).
    ``threads``: torch's compute threads (default :func:`dlkit.training.threads.resolve_threads`),
    set before torch starts.
    """
    from dlkit.training.threads import use_threads

    use_threads(threads)
    from dlkit.training.distributed import env_world_size, init_from_env, shutdown

    started = False
    try:
        if env_world_size() > 1:
            started = init_from_env(str(recipe.train.get("device", "auto")))
        return _train(recipe, repo, resume=resume, quiet=quiet, callbacks=callbacks)
    finally:
        if started:
            shutdown()


def _train(recipe: Recipe, repo: ModelRepository | None, *, resume: bool, quiet: bool,
           callbacks: list | None) -> TrainResult | None:
    from dlkit.training.distributed import broadcast_text, rank_and_world
    from dlkit.plugins import get_registry

    repo = repo or ModelRepository()
    registry = get_registry()
    spec = registry.model(recipe.arch)
    source = str(recipe.data.get("source", "digits"))
    name = recipe.name or default_name(recipe.arch, source)
    staged = None
    if resume:
        found = repo.interrupted(name, CHECKPOINT)
        if not found:
            raise InputError(f"--resume: no interrupted run of {name!r} in {repo.root}")
        staged = found[0]
        stored = Recipe(**read_json(staged.path / RECIPE_FILE))
        if "epochs" in recipe.train:  # allow extending a run; everything else stays as started
            stored.train["epochs"] = recipe.train["epochs"]
        recipe = stored
    trainer = registry.trainer(spec.trainer)
    rank, world = rank_and_world()
    if world > 1 and not trainer.distributed:
        raise InputError(f"trainer {trainer.name!r} (for {spec.name!r}) does not support distributed training")
    hparams = check_options("model", recipe.model, spec.defaults)
    config = check_options("train", recipe.train, trainer.defaults)
    if "epochs" in config and (not isinstance(config["epochs"], int) or config["epochs"] < 1):
        raise InputError(f"--epochs must be at least 1, got {config['epochs']}")
    data_options = {k: v for k, v in recipe.data.items() if k not in ("source", "seed")}
    from dlkit.data.load import load_dataset
    from dlkit.training.build import build_model, check_compatible, count_params

    dataset = load_dataset(source, data_options, int(recipe.data.get("seed", 0)))

    check_compatible(spec, dataset.input_spec, source)
    from dlkit.data.input_stats import input_stats

    # What the inputs looked like, so that predict can warn about one that is nothing like them.
    dataset.input_spec["stats"] = input_stats(dataset.x_train, dataset.kind)
    from dlkit.data.csv_table import target_summary

    target = target_summary(dataset.input_spec, dataset.num_classes)
    if target and rank == 0 and not quiet:
        print(f"dlkit: {target}", file=sys.stderr)  # the column chosen is never a silent guess
    import torch

    torch.manual_seed(recipe.seed)
    model = build_model(spec, hparams, dataset.input_spec, dataset.num_classes)
    if rank > 0:  # only rank 0 writes; the others train their shard in rank 0's folder
        workdir = Path(broadcast_text(""))
        trainer.fit(TrainRun(model=model, spec=spec, data=dataset, config=config, seed=recipe.seed,
                             workdir=workdir, resume=resume, quiet=True, repo=repo))
        return None
    if staged is None:
        for path in repo.clean_staging(name):
            print(f"dlkit: discarded the interrupted run in {path} (--resume continues one)", file=sys.stderr)
        staged = repo.stage(name)
        write_json(staged.path / RECIPE_FILE, recipe.as_dict())
    broadcast_text(str(staged.path))
    run = TrainRun(model=model, spec=spec, data=dataset, config=config, seed=recipe.seed,
                   workdir=staged.path, resume=resume, quiet=quiet, callbacks=list(callbacks or []), repo=repo)
    try:
        metrics = dict(trainer.fit(run) or {})
        model = run.model.cpu().eval()
        if spec.task == "classification":
            from dlkit.training.supervised import evaluate_arrays

            test = evaluate_arrays(model, dataset.x_test, dataset.y_test)
            val = evaluate_arrays(model, dataset.x_val, dataset.y_val)
            metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"], val_accuracy=val["accuracy"])
        save_tensors(staged.path / WEIGHTS, model.state_dict())
        meta = {
            "arch": spec.name, "plugin": spec.plugin, "task": spec.task, "trainer": spec.trainer,
            "hparams": hparams, "train": config, "seed": recipe.seed,
            "input_spec": dataset.input_spec, "labels": dataset.labels, "num_classes": dataset.num_classes,
            "data": dataset.describe(), "metrics": metrics, "params": count_params(model), "world_size": world,
            "threads": torch.get_num_threads(),
            "parent": None, "method": None, "recipe": recipe.as_dict(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
        }
        for leftover in (CHECKPOINT, RECIPE_FILE):
            (staged.path / leftover).unlink(missing_ok=True)
        for torn in staged.path.glob(".*.tmp"):  # a write killed mid-way, before a --resume
            torn.unlink(missing_ok=True)
        version = staged.commit(meta)
    except InputError:
        staged.release() if resume else staged.discard()
        raise
    except BaseException:
        # Keep what a later --resume can continue; drop a folder that holds nothing useful.
        if (staged.path / CHECKPOINT).is_file():
            staged.release()
        else:
            staged.discard()
        raise
    return TrainResult(version, metrics, meta["params"], target)
