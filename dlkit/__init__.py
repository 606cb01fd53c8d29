"""dlkit: train, compress, export and serve neural networks, extended by plugins.

The package root is the plugin API: every name in ``__all__`` is what a plugin (built-in or
third-party) may import, ``from dlkit import ...``; everything else is internal and may move.
Names resolve lazily on first use (PEP 562), so ``import dlkit`` and ``dlkit --help`` stay
instant: importing a name from the training API pays for torch, importing ``hookimpl`` does not.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from dlkit.errors import DlkitError, InputError, PluginError
from dlkit.hookspecs import hookimpl

__version__ = "0.1.0"

# public name -> "module" (same attribute name) or "module:attribute"
_API: dict[str, str] = {
    # the plugin contract
    "get_registry": "dlkit.plugins",
    "ModelSpec": "dlkit.registry", "TrainerSpec": "dlkit.registry", "CompressorSpec": "dlkit.registry",
    "DatasetSpec": "dlkit.registry",
    # the model repository
    "ModelRepository": "dlkit.store.repository", "ModelVersion": "dlkit.store.repository",
    "StagedVersion": "dlkit.store.repository", "check_name": "dlkit.store.repository",
    "derive": "dlkit.store.derive", "library_versions": "dlkit.store.derive",
    "META": "dlkit.store.repository", "WEIGHTS": "dlkit.store.repository", "ONNX": "dlkit.store.repository",
    "atomic_path": "dlkit.store.atomic", "write_bytes": "dlkit.store.atomic", "write_json": "dlkit.store.atomic",
    "read_json": "dlkit.store.atomic",
    "save_tensors": "dlkit.store.weights", "load_tensors": "dlkit.store.weights", "load_weights": "dlkit.store.weights",
    "Recipe": "dlkit.store.recipe", "read_recipe": "dlkit.store.recipe", "apply_sets": "dlkit.store.recipe",
    "check_options": "dlkit.store.recipe",
    # data
    "Dataset": "dlkit.data.dataset", "make_dataset": "dlkit.data.dataset", "value_range": "dlkit.data.dataset",
    "split_stratified": "dlkit.data.dataset", "load_dataset": "dlkit.data.load",
    # training
    "train": "dlkit.training.run", "recipe_from": "dlkit.training.run", "TrainRun": "dlkit.training.run",
    "TrainResult": "dlkit.training.run",
    "trained_meta": "dlkit.training.run", "task_metrics": "dlkit.training.run",
    "EpochLoop": "dlkit.training.loop", "TrainingDiverged": "dlkit.training.loop",
    "resolve_device": "dlkit.training.loop",
    "SUPERVISED_DEFAULTS": "dlkit.training.supervised_options:DEFAULTS",
    "validate_supervised": "dlkit.training.supervised_options:validate",
    "CHECKPOINT": "dlkit.training.state", "STAGING": "dlkit.store.repository",
    "SupervisedTrainer": "dlkit.training.supervised", "evaluate_arrays": "dlkit.training.supervised",
    "random_shift": "dlkit.training.supervised",
    "Callback": "dlkit.training.callbacks", "CurvePlot": "dlkit.training.callbacks",
    "MetricsLog": "dlkit.training.callbacks",
    "ProgressBar": "dlkit.training.callbacks",
    "build_model": "dlkit.training.build", "load_model": "dlkit.training.build", "count_params": "dlkit.training.build",
    "check_compatible": "dlkit.training.build",
    # export
    "OnnxGraph": "dlkit.export.graph", "export_onnx": "dlkit.export.onnx", "write_triton_config": "dlkit.export.triton",
    # inference (onnxruntime, no torch)
    "Session": "dlkit.infer.session", "check_external_data": "dlkit.infer.onnx_files",
    "graph_params": "dlkit.infer.onnx_files", "default_opset": "dlkit.store.meta",
    "read_feeds": "dlkit.infer.feeds",
    "evaluate": "dlkit.infer.evaluate", "evaluation_data": "dlkit.infer.evaluate",
    "graph_outputs": "dlkit.infer.evaluate",
    "softmax_cross_entropy": "dlkit.infer.evaluate",
    # tasks
    "ScoreCheck": "dlkit.tasks.checks",
    # what a plugin's CLI command needs
    "repo_option": "dlkit.cli.options", "json_option": "dlkit.cli.options", "open_repo": "dlkit.cli.options",
    "threads_option": "dlkit.cli.options", "provider_option": "dlkit.cli.options",
    "use_threads": "dlkit.training.threads",
    "resolve_threads": "dlkit.training.threads",
    "emit": "dlkit.cli.output", "console": "dlkit.cli.output", "table": "dlkit.cli.output",
}

__all__ = ["hookimpl", "DlkitError", "InputError", "PluginError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'dlkit' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(import_module(module), attr or name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
