"""The plugin author's contract: every hook dlkit calls, one docstring each.

Each ``register_*`` hook receives a ``register`` callback rather than returning values, so
dlkit validates names and rejects duplicates in one place, naming both plugins. Hook
implementations must stay cheap: import torch, onnx or sklearn inside the factories they
register, never at module level, so that ``dlkit --help`` stays instant. docs/plugins.md has a
tutorial and a section per hook (tests/test_docs.py fails when a hook has none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("dlkit")
hookimpl = pluggy.HookimplMarker("dlkit")


# -- the register callbacks, typed (tests/test_docs.py checks each against its spec dataclass) --
class RegisterModel(Protocol):
    def __call__(self, name: str, build: Callable[..., Any], *, input_kinds: set[str] | frozenset[str],
                 defaults: dict | None = None, trainer: str = "supervised", train_defaults: dict | None = None,
                 task: str | list[str] = "classification", export: Callable[..., Any] | None = None,
                 description: str = "") -> None: ...


class RegisterTrainer(Protocol):
    def __call__(self, name: str, fit: Callable[..., Any], *, defaults: dict | None = None,
                 distributed: bool = False, description: str = "") -> None: ...


class RegisterCompressor(Protocol):
    def __call__(self, name: str, compress: Callable[..., Any], *, description: str = "") -> None: ...


class RegisterDataset(Protocol):
    def __call__(self, name: str, load: Callable[..., Any], *, suffixes: tuple[str, ...] = (),
                 directory: bool = False, kind: str | None = None, description: str = "") -> None: ...


class RegisterTask(Protocol):
    def __call__(self, name: str, metrics: Callable[..., Any], *, output: str = "output",
                 loss: Callable[..., Any] | None = None, target_dtype: str = "float32", score: str = "loss",
                 higher_is_better: bool = False, batch_score: Callable[..., Any] | None = None,
                 export: Callable[..., Any] | None = None, describe: Callable[..., Any] | None = None,
                 quality: Callable[..., Any] | None = None, scores: tuple[str, ...] = (),
                 description: str = "") -> None: ...


@hookspec
def register_models(register: RegisterModel) -> None:
    """Register model architectures.

    ``register(name, build, *, input_kinds, defaults=None, trainer="supervised",
    train_defaults=None, task="classification", export=None, description="")``

    :param build: ``build(hparams: dict, input_spec: dict, num_classes: int) -> torch.nn.Module``.
        ``hparams`` is ``defaults`` updated by the user's ``--set``; ``input_spec`` is the data
        set's (``{"kind", "shape", "dtype", "range"}``, shape without the batch dimension).
    :param input_kinds: the data kinds the architecture accepts (``tabular``, ``image``,
        ``sequence``, ``noise``, or any kind a data set plugin produces, such as ``text``); the
        core only matches them with the data set's ``input_spec["kind"]`` before training.
    :param trainer: name of the trainer that fits it (``supervised``, ``gan``...).
    :param train_defaults: this architecture's own defaults for some of that trainer's options
        (``{"epochs": 40, "lr": 3e-3}``), merged over the trainer's defaults whenever it trains this
        architecture, so ``dlkit train ARCH`` with no recipe trains as well as a tuned recipe; a
        recipe's ``[train]`` and ``--set`` still override them. A key the trainer does not have is
        a plugin error at the first training.
    :param task: the registered task it solves by default (``classification``), or a list of
        the tasks it can solve, the first the default (``["classification", "regression"]``);
        ``--set task=NAME`` picks another. ``num_classes`` is then the output width the task needs.
    :param export: optional ``export(module, meta) -> dlkit.OnnxGraph`` describing what to export
        and its example inputs; without it the task's export is used (classifiers: ``logits``
        and ``probabilities``; regressors: ``prediction``).
    """


@hookspec
def register_trainers(register: RegisterTrainer) -> None:
    """Register trainers.

    ``register(name, fit, *, defaults=None, distributed=False, description="")``

    :param fit: ``fit(run: dlkit.training.TrainRun) -> dict`` trains ``run.model`` on
        ``run.data`` under ``run.config``, checkpointing into ``run.workdir`` so that
        ``--resume`` continues, and returns the metrics to record in meta.json.
    :param defaults: the trainer's options and their defaults (settable with ``--set KEY=V``).
    :param distributed: whether ``fit`` trains data-parallel under torchrun (each rank its share
        of every batch, only rank 0 writing); ``dlkit train --nproc N`` refuses trainers without it.
    """


@hookspec
def register_compressors(register: RegisterCompressor) -> None:
    """Register compressors (quantization methods, distillation, pruning...).

    ``register(name, compress, *, description="")``

    :param compress: ``compress(source: dlkit.repository.ModelVersion, options: dict,
        repo: dlkit.repository.ModelRepository) -> ModelVersion`` writes a *new* model whose
        meta.json records ``parent`` (name, version) and ``method``; it never changes ``source``.
    """


@hookspec
def register_datasets(register: RegisterDataset) -> None:
    """Register data sets and loaders for user files.

    ``register(name, load, *, suffixes=(), directory=False, kind=None, description="")``

    :param load: ``load(source: str, options: dict, seed: int) -> dlkit.data.Dataset``;
        ``source`` is the name or path the user gave to ``--data``.
    :param suffixes: file suffixes this loader reads (``(".csv",)``); a path with one of them
        given to ``--data`` is loaded by it.
    :param directory: whether the loader reads a folder (image folders).
    """


@hookspec
def register_tasks(register: RegisterTask) -> None:
    """Register tasks: what a model's outputs mean, and how they are trained, scored, exported,
    printed and checked after compression.

    ``register(name, metrics, *, output="output", loss=None, target_dtype="float32",
    score="loss", higher_is_better=False, batch_score=None, export=None, describe=None,
    quality=None, scores=(), description="")``

    :param metrics: ``metrics(outputs: np.ndarray, targets: np.ndarray) -> dict`` of floats,
        computed in numpy from the graph's ``output`` (torch and onnxruntime alike); must
        include ``loss``. ``train --json``, ``evaluate`` and ``models`` report them, prefixed
        ``val_``/``test_``.
    :param output: the name of the ONNX output (and the torch module's output) ``metrics`` reads.
    :param loss: ``loss(outputs, targets, config) -> torch scalar`` for the supervised trainer.
    :param target_dtype: ``int64`` (class indices) or ``float32`` (values): how targets are fed.
    :param score: the metric compressors keep within a tolerance and ``dlkit models`` shows.
    :param batch_score: optional ``batch_score(outputs, targets) -> tensor`` summed over a
        training epoch and divided by its samples: ``train_<score>`` in the epoch logs.
    :param export: ``export(module, meta) -> dlkit.OnnxGraph``: the graph of an architecture
        that registers no ``export`` of its own.
    :param describe: ``describe(outputs: dict, names: list[str], meta: dict, top_k: int) ->
        list[dict]``: one printable prediction per sample, for ``dlkit predict``.
    :param quality: ``quality(version, dataset, repo, session) -> check``: the check a
        compressor keeps within its tolerance (``dlkit.tasks.checks`` has the interface and a
        ready ``ScoreCheck``).
    :param scores: the graph outputs that hold one score per class label (``meta["labels"]``),
        preferred first; ``dlkit serve`` attaches the labels to them and serves Triton's
        classification extension on them (classification: ``("probabilities", "logits")``).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``dlkit`` click group: ``@cli.command()`` as usual.

    :param cli: the root :class:`click.Group`. Import heavy modules inside the command body.
    """
