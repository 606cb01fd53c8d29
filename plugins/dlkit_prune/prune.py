"""``dlkit prune`` as a Python API: whole channels and neurons removed, fine-tuned, exported, measured.

torch-pruning (``MetaPruner`` with the L2 magnitude of each coupled group of channels) removes
``sparsity`` of the channels of every prunable layer; its dependency graph shrinks whatever reads
them (batch norms, the next layer, the classifier after global pooling). The output layer and
recurrent layers are left whole. The smaller model is fine-tuned on the parent's training split
with the supervised trainer, published through ``derive`` as architecture ``pruned``, exported
to ONNX (checked against torch like every export) and timed against the parent's graph.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlkit import InputError, ModelRepository, ModelVersion, check_name

from .measure import compare

DEFAULTS = {"sparsity": 0.5, "epochs": 3, "lr": None, "name": None, "seed": 0, "quiet": True, "measure_seconds": 1.0}


def check_options(version: ModelVersion, options: dict) -> dict:
    """Every option checked before any work: an InputError naming the flag."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise InputError(f"prune: unknown option {sorted(unknown)[0]!r}; known: {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    s = o["sparsity"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
        raise InputError(f"--sparsity must be a fraction of channels between 0 and 1 (exclusive), got {s!r}")
    if isinstance(o["epochs"], bool) or not isinstance(o["epochs"], int) or o["epochs"] < 0:
        raise InputError(f"--epochs must be an integer >= 0 (fine-tuning epochs), got {o['epochs']!r}")
    if o["lr"] is not None and not (isinstance(o["lr"], (int, float)) and o["lr"] > 0):
        raise InputError(f"--lr must be > 0, got {o['lr']!r}")
    if version.meta.get("task", "classification") not in ("classification", "regression"):
        raise InputError(f"model {version.ref} is a {version.meta.get('task')} model; prune handles "
                         f"classifiers and regressors")
    if not version.has_weights():
        raise InputError(f"model {version.ref} has no PyTorch weights to prune (an imported or quantized graph); "
                         f"prune its float parent")
    o["name"] = check_name(o["name"] or f"{version.name}-pruned")
    if o["name"] == version.name:
        raise InputError(f"--name {o['name']}: the pruned model needs a name of its own, not its parent's")
    return o


def prune(version: ModelVersion, repo: ModelRepository, log: Callable[[str], None] | None = None,
          **options: Any) -> dict:
    """Prune ``version`` into a new, smaller model; returns the report (before/after metrics,
    parameters, size and latency ratios). Options: see :data:`DEFAULTS`."""
    import torch

    from dlkit import WEIGHTS, derive, evaluation_data, load_model, save_tensors, task_metrics

    log = log or (lambda msg: print(f"dlkit: {msg}", file=sys.stderr))
    o = check_options(version, options)
    task = version.meta.get("task", "classification")
    module, spec = load_model(version)
    if spec.name == "pruned":
        raise InputError(f"model {version.ref} is pruned already; prune its parent with a larger --sparsity")
    data = evaluation_data(version)
    before = task_metrics(module, data, task)
    params_before = sum(p.numel() for p in module.parameters())
    torch.manual_seed(o["seed"])
    log(f"pruning {o['sparsity']:.0%} of the channels of {version.ref}")
    shapes = prune_channels(module, data, o["sparsity"])
    pruned_params = sum(p.numel() for p in module.parameters())
    after_prune = task_metrics(module, data, task)
    if o["epochs"]:
        log(f"fine-tuning {o['epochs']} epoch(s)")
        with repo.workspace("prune") as work:  # inside the repository, removed afterwards
            module, after = fine_tune(module, spec, version, data, o, task, work)
    else:
        after = after_prune
    hparams = {"base": {"arch": version.meta["arch"], "hparams": version.meta.get("hparams", {})}, "shapes": shapes}
    inherit = ("task", "input_spec", "labels", "num_classes", "num_outputs", "target_spec", "data")
    with derive(repo, version, "prune", o["name"], inherit=inherit) as new:
        save_tensors(new.path / WEIGHTS, module.state_dict())
        new.meta.update(arch="pruned", plugin="dlkit_prune", hparams=hparams, params=pruned_params,
                        metrics=after, pruning={"sparsity": float(o["sparsity"]), "epochs": o["epochs"],
                                                "method": "torch-pruning MetaPruner, L2 group magnitude",
                                                "before": before, "after_pruning": after_prune})
    from dlkit import export_onnx

    export_onnx(new.version, exporter="torchscript")
    report = {"model": new.version.name, "version": new.version.version, "path": str(new.version.path),
              "parent": {"name": version.name, "version": version.version}, "sparsity": float(o["sparsity"]),
              "params": pruned_params, "params_parent": params_before, "params_ratio": pruned_params / params_before,
              "metrics_parent": before, "metrics_pruned_before_fine_tuning": after_prune, "metrics": after,
              "measured": compare(version, repo.resolve(f"{new.version.name}:{new.version.version}"),
                                  o["measure_seconds"])}
    return report


def prune_channels(module, data, sparsity: float) -> dict:
    """Remove ``sparsity`` of the output channels of every prunable layer, in place; returns the
    new parameter shapes of the unwrapped module."""
    import torch
    import torch_pruning as tp
    from torch import nn

    from .rebuild import unwrapped

    base = unwrapped(module)
    example = torch.as_tensor(data.x_val[:2])
    outputs = module.eval()(example).shape[-1]
    linears = [m for m in base.modules() if isinstance(m, nn.Linear)]
    ignored = [m for m in base.modules() if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN, nn.Embedding))]
    ignored += [m for m in linears if m.out_features == outputs][-1:]  # the output layer keeps its classes
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=float(sparsity), ignored_layers=ignored)
    pruner.step()
    return {k: list(v.shape) for k, v in base.state_dict().items()}


def fine_tune(module, spec, version, data, o: dict, task: str, workdir: Path):
    """A few epochs of the supervised trainer on the parent's split, from the parent's own
    training options (a third of its learning rate unless ``lr`` is given)."""
    from dlkit import CHECKPOINT, SUPERVISED_DEFAULTS, SupervisedTrainer, TrainRun, task_metrics

    parent = {k: v for k, v in (version.meta.get("train") or {}).items() if k in SUPERVISED_DEFAULTS}
    config = {**SUPERVISED_DEFAULTS, **parent, "epochs": o["epochs"], "patience": 0, "device": "cpu"}
    config["lr"] = o["lr"] or config["lr"] / 3
    run = TrainRun(model=module.train(), spec=spec, data=data, config=config, seed=o["seed"],
                   workdir=Path(workdir), quiet=o["quiet"], task=task)
    SupervisedTrainer(run).fit()
    (Path(workdir) / CHECKPOINT).unlink(missing_ok=True)
    module = run.model.cpu().eval()
    return module, task_metrics(module, data, task)
