"""The plugin author's contract: every hook dlkit calls, one docstring each.

Each ``register_*`` hook receives a ``register`` callback rather than returning values, so
dlkit validates names and rejects duplicates in one place, naming both plugins. Hook
implementations must stay cheap: import torch, onnx or sklearn inside the factories they
register, never at module level, so that ``dlkit --help`` stays instant. docs/plugins.md has a
tutorial and a section per hook (tests/test_docs.py fails when a hook has none).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("dlkit")
hookimpl = pluggy.HookimplMarker("dlkit")


@hookspec
def register_models(register):
    """Register model architectures.

    ``register(name, build, *, input_kinds, defaults=None, trainer="supervised",
    task="classification", export=None, description="")``

    :param build: ``build(hparams: dict, input_spec: dict, num_classes: int) -> torch.nn.Module``.
        ``hparams`` is ``defaults`` updated by the user's ``--set``; ``input_spec`` is the data
        set's (``{"kind", "shape", "dtype", "range"}``, shape without the batch dimension).
    :param input_kinds: the data kinds the architecture accepts, from ``tabular``, ``image``,
        ``sequence`` and ``noise``; asking for anything else is refused before training.
    :param trainer: name of the trainer that fits it (``supervised``, ``gan``...).
    :param task: ``classification`` (outputs logits) or ``generation``.
    :param export: optional ``export(module, meta) -> dlkit.export.OnnxGraph`` describing what
        to export and its example inputs; classifiers export ``logits`` and ``probabilities``.
    """


@hookspec
def register_trainers(register):
    """Register trainers.

    ``register(name, fit, *, defaults=None, description="")``

    :param fit: ``fit(run: dlkit.training.TrainRun) -> dict`` trains ``run.model`` on
        ``run.data`` under ``run.config``, checkpointing into ``run.workdir`` so that
        ``--resume`` continues, and returns the metrics to record in meta.json.
    :param defaults: the trainer's options and their defaults (settable with ``--set KEY=V``).
    """


@hookspec
def register_compressors(register):
    """Register compressors (quantization methods, distillation, pruning...).

    ``register(name, compress, *, description="")``

    :param compress: ``compress(source: dlkit.repository.ModelVersion, options: dict,
        repo: dlkit.repository.ModelRepository) -> ModelVersion`` writes a *new* model whose
        meta.json records ``parent`` (name, version) and ``method``; it never changes ``source``.
    """


@hookspec
def register_datasets(register):
    """Register data sets and loaders for user files.

    ``register(name, load, *, suffixes=(), directory=False, kind=None, description="")``

    :param load: ``load(source: str, options: dict, seed: int) -> dlkit.data.Dataset``;
        ``source`` is the name or path the user gave to ``--data``.
    :param suffixes: file suffixes this loader reads (``(".csv",)``); a path with one of them
        given to ``--data`` is loaded by it.
    :param directory: whether the loader reads a folder (image folders).
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``dlkit`` click group: ``@cli.command()`` as usual.

    :param cli: the root :class:`click.Group`. Import heavy modules inside the command body.
    """
