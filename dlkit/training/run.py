"""``dlkit train`` as a Python API: recipe in, a new model version in the repository out."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlkit.errors import InputError
from dlkit.registry import ModelSpec
from dlkit.store.atomic import read_json, write_json
from dlkit.store.derive import library_versions
from dlkit.store.recipe import Recipe, apply_sets, check_options, read_recipe
from dlkit.store.repository import WEIGHTS, ModelRepository, ModelVersion, check_name
from dlkit.store.weights import save_tensors
from dlkit.training.build import count_params
from dlkit.training.state import CHECKPOINT

RECIPE_FILE = "recipe.json"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run whose last checkpoint is kept: ``resume=True`` continues it."""

    def __init__(self, name: str, path: Path):
        super().__init__(f"training of {name!r} interrupted; its checkpoint is kept in {path}")
        self.name, self.path = name, path


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
    task: str | None = None  # the registered task trained (None: the architecture's default)

    @property
    def task_name(self) -> str:
        return self.task or self.spec.task


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


def task_metrics(model: Any, data: Any, task: str = "classification") -> dict:
    """A trained model's scores on the test and validation splits, as its task computes them
    (``test_accuracy``, ``val_accuracy``, ``test_loss``... for a classifier)."""
    from dlkit.training.supervised import evaluate_arrays

    test = evaluate_arrays(model, data.x_test, data.y_test, task=task)
    val = evaluate_arrays(model, data.x_val, data.y_val, task=task)
    return {**{f"test_{k}": v for k, v in test.items()}, **{f"val_{k}": v for k, v in val.items()}}


def trained_meta(spec: ModelSpec, trainer: str, hparams: dict, config: dict, seed: int, data: Any,
                 model: Any, metrics: dict, task: str | None = None) -> dict:
    """meta.json of a freshly trained model: ``train``'s and the distillation student's alike."""
    return {
        "arch": spec.name, "plugin": spec.plugin, "task": task or spec.task, "trainer": trainer,
        "hparams": hparams, "train": config, "seed": seed, "target_spec": data.target_spec,
        "num_outputs": data.num_outputs,
        "input_spec": data.input_spec, "labels": data.labels, "num_classes": data.num_classes,
        "data": data.describe(), "metrics": metrics, "params": count_params(model),
        "parent": None, "method": None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def recipe_from(target: str | Recipe, *, sets: list[str] | tuple = (), data: str | None = None,
                name: str | None = None, seed: int | None = None, trainer_defaults: dict | None = None,
                **train_flags: Any) -> Recipe:
    """A recipe with the command line's overrides: the one merge ``dlkit train``, ``distill`` and
    the Python API share.

    ``target`` is a RECIPE.toml path, an architecture name or a :class:`Recipe` (copied, never
    changed). ``sets`` are ``KEY=VALUE`` items (``model.KEY``, ``train.KEY``, ``data.KEY`` or a bare
    key of the architecture or trainer); ``train_flags`` (``epochs``, ``batch_size``, ``lr``,
    ``device``...) are training options, None meaning not given. ``trainer_defaults`` are the
    trainer's options when another than the architecture's own trains it (distillation).
    """
    from dlkit.plugins import get_registry

    if isinstance(target, Recipe):
        recipe = copy.deepcopy(target)
    else:
        recipe = read_recipe(target) if str(target).endswith(".toml") else Recipe(arch=str(target))
    registry = get_registry()
    spec = registry.model(recipe.arch)
    if trainer_defaults is None:
        trainer_defaults = spec.train_options(registry.trainer(spec.trainer))
    apply_sets(recipe, list(sets), set(spec.defaults), set(trainer_defaults))
    recipe.train.update({k: v for k, v in train_flags.items() if v is not None})
    if data:
        recipe.data["source"] = data
    if name:
        recipe.name = name
    if seed is not None:
        recipe.seed = seed
    return recipe


def train(recipe: str | Recipe, repo: ModelRepository | None = None, *, sets: list[str] | tuple = (),
          resume: bool = False, restart: bool = False, quiet: bool = False, callbacks: list | None = None,
          threads: int | None = None, **overrides: Any) -> TrainResult | None:
    """Train ``recipe`` and publish the result as the next version of its model name.

    ``recipe`` is a :class:`Recipe`, a RECIPE.toml path or an architecture name; ``sets`` and
    ``overrides`` (``data``, ``name``, ``seed``, ``epochs``, ``lr``...) apply on top, exactly as
    ``dlkit train``'s ``--set`` and flags do (:func:`recipe_from`). Bad input raises
    :class:`InputError` before anything is written. A run that fails after its first checkpoint
    leaves a staging folder that ``resume=True`` continues. Under torchrun every rank trains its
    shard and only rank 0 writes and returns the result (others: None). An interrupted run of the
    same name is never discarded silently: without ``resume`` (continue it) or ``restart`` (discard
    it) the call refuses; Ctrl-C after a checkpoint raises :class:`TrainingInterrupted`. ``threads``: torch's
    compute threads (default :func:`dlkit.training.threads.resolve_threads`), set before torch starts.
    """
    from dlkit.training.threads import use_threads

    repo = repo or ModelRepository()
    repo.check_writable()  # a read-only repository is found before torch is imported, not after
    use_threads(threads)
    from dlkit.training.distributed import barrier, env_world_size, init_from_env, shutdown

    if sets or overrides or not isinstance(recipe, Recipe):
        recipe = recipe_from(recipe, sets=sets, **overrides)
    started = False
    try:
        if env_world_size() > 1:
            started = init_from_env(str(recipe.train.get("device", "auto")))
        result = _train(recipe, repo or ModelRepository(), resume=resume, restart=restart, quiet=quiet,
                        callbacks=callbacks)
        if started:
            barrier()  # the other ranks wait for rank 0's publishing, then every rank tears down together
        return result
    finally:
        if started:
            shutdown()


@dataclass
class _Prepared:
    """A run checked and built, before anything is written."""

    recipe: Recipe
    spec: ModelSpec
    trainer: Any  # TrainerSpec
    hparams: dict
    config: dict
    dataset: Any
    model: Any
    world: int
    task: str


def _resumed_recipe(repo: ModelRepository, name: str, recipe: Recipe) -> tuple[Any, Recipe]:
    """The interrupted run to continue and the recipe it started with (``--epochs`` may extend it)."""
    from dlkit.training.distributed import rank_and_world

    writer = rank_and_world()[0] == 0  # under torchrun the other ranks read the folder rank 0 holds
    found = repo.interrupted(name, CHECKPOINT, held_too=not writer)
    if not found:
        raise InputError(f"--resume: no interrupted run of {name!r} in {repo.root}")
    staged = found[0].claim() if writer else found[0]  # held from here: no other run cleans it meanwhile
    try:
        stored = Recipe(**read_json(staged.path / RECIPE_FILE)).check(str(staged.path / RECIPE_FILE))
    except TypeError as exc:  # keys a Recipe does not have: not a file dlkit wrote
        raise InputError(f"{staged.path / RECIPE_FILE}: not a dlkit recipe ({exc})") from None
    if "epochs" in recipe.train:  # allow extending a run; everything else stays as started
        stored.train["epochs"] = recipe.train["epochs"]
    return staged, stored


def _refuse_to_discard(repo: ModelRepository, name: str) -> None:
    """A fresh run must not delete an interrupted one of the same name without being told to."""
    found = repo.interrupted(name, CHECKPOINT)
    if found:
        raise InputError(f"an interrupted run of {name!r} is kept in {found[0].path}: continue it with --resume, "
                         f"or discard it and start over with --restart")


def _prepare(recipe: Recipe, repo: ModelRepository) -> _Prepared:
    """Check every option, load the data and build the model: all bad input is found here."""
    import torch

    from dlkit.data.load import load_dataset
    from dlkit.data.streaming import cache_dir
    from dlkit.plugins import get_registry
    from dlkit.training.build import build_model, check_compatible
    from dlkit.training.distributed import rank_and_world

    registry = get_registry()
    spec = registry.model(recipe.arch)
    trainer = registry.trainer(spec.trainer)
    _, world = rank_and_world()
    if world > 1 and not trainer.distributed:
        raise InputError(f"trainer {trainer.name!r} (for {spec.name!r}) does not support distributed training")
    hparams = check_options("model", recipe.model, spec.defaults)
    config = check_options("train", recipe.train, spec.train_options(trainer))
    if "epochs" in config and (not isinstance(config["epochs"], int) or config["epochs"] < 1):
        raise InputError(f"--epochs must be at least 1, got {config['epochs']}")
    source = str(recipe.data.get("source", "digits"))
    data_options = {k: v for k, v in recipe.data.items() if k not in ("source", "seed")}
    if recipe.task is not None:
        check_task(spec, recipe.task)
        if registry.task(recipe.task).target_dtype == "float32":
            data_options["targets"] = "values"
    with cache_dir(repo.root / ".cache"):  # decoded data too large for memory is cached in the repository
        dataset = load_dataset(source, data_options, int(recipe.data.get("seed", 0)))
    check_compatible(spec, dataset.input_spec, source)
    task = recipe.task or task_for(spec, dataset, registry)
    if dataset.targets == "none" and registry.task(task).loss is not None:
        raise InputError(f"--data {source}: task {task!r} trains on targets, and data.targets=none gives none")
    torch.manual_seed(recipe.seed)
    model = build_model(spec, hparams, dataset.input_spec, dataset.num_outputs, dataset.target_spec)
    return _Prepared(recipe, spec, trainer, hparams, config, dataset, model, world, task)


def check_task(spec: ModelSpec, task: str) -> None:
    """Refuse a task the architecture does not solve, naming the ones it does."""
    if task not in spec.tasks:
        from dlkit.plugins import get_registry

        others = [s.name for s in get_registry().all("model") if task in s.tasks]
        hint = f"; architectures that do {task}: {', '.join(others)}" if others else ""
        raise InputError(f"architecture {spec.name!r} does not do {task} (it does: {', '.join(spec.tasks)}); "
                         f"set task= to one of those{hint}")


def task_for(spec: ModelSpec, dataset: Any, registry: Any) -> str:
    """The task a run with no ``task=`` trains: the architecture's default for class labels, its
    first task on values for numeric targets (a CSV target with many distinct numbers)."""
    if dataset.targets != "values":  # class labels, or none (a task that learns without targets)
        return spec.task
    for name in spec.tasks:
        if name in registry.names("task") and registry.task(name).target_dtype == "float32":
            return name
    raise InputError(f"{dataset.name} has numeric targets, and architecture {spec.name!r} has no task that "
                     f"predicts numbers (it does: {', '.join(spec.tasks)})")


def _train(recipe: Recipe, repo: ModelRepository, *, resume: bool, restart: bool, quiet: bool,
           callbacks: list | None) -> TrainResult | None:
    from dlkit.data.csv_table import target_summary
    from dlkit.training.distributed import broadcast_text, rank_and_world

    recipe.check()  # --seed and Python callers too, not only RECIPE.toml files
    # Checked before anything touches <repo>/<name>/.staging: a name is a folder name, never a path.
    name = check_name(recipe.name or default_name(recipe.arch, str(recipe.data.get("source", "digits"))))
    staged = None
    if resume and restart:
        raise InputError("--resume continues the interrupted run and --restart discards it: give one")
    if resume:
        staged, recipe = _resumed_recipe(repo, name, recipe)
    elif not restart:
        _refuse_to_discard(repo, name)
    p = _prepare(recipe, repo)
    target = target_summary(p.dataset.input_spec, p.dataset.num_classes if p.dataset.targets == "labels" else None)
    if target and rank_and_world()[0] == 0 and not quiet:
        print(f"dlkit: {target}", file=sys.stderr)  # the column chosen is never a silent guess
    if rank_and_world()[0] > 0:  # only rank 0 writes; the others train their shard in rank 0's folder
        workdir = Path(broadcast_text(""))
        p.trainer.fit(TrainRun(model=p.model, spec=p.spec, data=p.dataset, config=p.config, seed=recipe.seed,
                               workdir=workdir, resume=resume, quiet=True, repo=repo, task=p.task))
        return None
    if staged is None:
        for path in repo.clean_staging(name):
            print(f"dlkit: discarded the interrupted run in {path} (--resume continues one)", file=sys.stderr)
        staged = repo.stage(name)
        write_json(staged.path / RECIPE_FILE, recipe.as_dict())
    broadcast_text(str(staged.path))
    run = TrainRun(model=p.model, spec=p.spec, data=p.dataset, config=p.config, seed=recipe.seed,
                   workdir=staged.path, resume=resume, quiet=quiet, callbacks=list(callbacks or []), repo=repo,
                   task=p.task)
    try:
        version, metrics, params = _fit_and_publish(p, run, staged)
    except InputError:
        staged.release() if resume else staged.discard()
        raise
    except BaseException as exc:
        # Keep what a later --resume can continue; drop a folder that holds nothing useful.
        if (staged.path / CHECKPOINT).is_file():
            staged.release()
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):
                raise TrainingInterrupted(name, staged.path) from exc
        else:
            staged.discard()
        raise
    return TrainResult(version, metrics, params, target)


def _fit_and_publish(p: _Prepared, run: TrainRun, staged: Any) -> tuple[ModelVersion, dict, int]:
    """Train, score, write the weights and meta.json, and publish the staged folder."""
    from dlkit.plugins import get_registry

    metrics = dict(p.trainer.fit(run) or {})
    model = run.model.cpu().eval()
    task = get_registry().task(p.task)
    if task.loss is not None:  # a task trained on targets is scored on them (a generator has its own measures)
        metrics.update(task_metrics(model, p.dataset, p.task))
    save_tensors(staged.path / WEIGHTS, model.state_dict())
    meta = trained_meta(p.spec, p.spec.trainer, p.hparams, p.config, p.recipe.seed, p.dataset, model, metrics,
                        p.task)
    import torch

    meta.update(world_size=p.world, recipe=p.recipe.as_dict(), threads=torch.get_num_threads())
    for leftover in (CHECKPOINT, RECIPE_FILE):
        (staged.path / leftover).unlink(missing_ok=True)
    for torn in staged.path.glob(".*.tmp"):  # a write killed mid-way, before a --resume
        torn.unlink(missing_ok=True)
    return staged.commit(meta), metrics, meta["params"]
