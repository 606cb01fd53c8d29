"""The ``sparsify`` compressor: zero the smallest-magnitude weights of a stored model.

The pruned weights are written as a new model (dense tensors with zeros: smaller once
compressed, and the same graph for ONNX export); the source version is never changed.
"""

from dlkit import WEIGHTS, InputError, ModelRepository, ModelVersion, check_name, derive, save_tensors


def prunable(module):
    """(layer, "weight") for every Linear and Conv layer: the weights pruning applies to."""
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [(m, "weight") for m in module.modules() if isinstance(m, kinds)]


def sparsity(targets) -> float:
    """Fraction of exact zeros among the targeted weights."""
    total = sum(getattr(m, n).numel() for m, n in targets)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    return zeros / total if total else 0.0


def sparsify_version(source: ModelVersion, options: dict, repo: ModelRepository) -> ModelVersion:
    """Prune ``source`` by ``options["amount"]`` (0..1) and publish it as a new model."""
    import torch.nn.utils.prune as torch_prune

    from dlkit import evaluate_arrays, evaluation_data, load_model

    amount = options.get("amount", 0.5)
    scope = options.get("scope", "global")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise InputError(f"--amount must be a fraction between 0 and 1 (exclusive), got {amount!r}")
    if scope not in ("global", "layer"):
        raise InputError(f"--scope must be global or layer, got {scope!r}")
    if source.meta.get("task", "classification") != "classification":
        raise InputError(f"model {source.ref} is a {source.meta.get('task')} model; sparsify needs a classifier")
    name = check_name(options.get("name") or f"{source.name}-sparse")

    module, _ = load_model(source)
    targets = prunable(module)
    if not targets:
        raise InputError(f"model {source.ref} has no Linear or Conv layers to sparsify")
    data = evaluation_data(source)
    before = evaluate_arrays(module, data.x_test, data.y_test)
    if scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=float(amount))
    else:
        for layer, param in targets:
            torch_prune.l1_unstructured(layer, param, amount=float(amount))
    for layer, param in targets:
        torch_prune.remove(layer, param)  # bake the mask into the weight: a plain state_dict again
    test = evaluate_arrays(module, data.x_test, data.y_test)
    val = evaluate_arrays(module, data.x_val, data.y_val)

    with derive(repo, source, "sparsify", name) as new:  # keeps what the model is, adds the lineage
        save_tensors(new.path / WEIGHTS, module.state_dict())
        new.meta.update(
            compression={"amount": float(amount), "scope": scope, "layers": len(targets)},
            sparsity=sparsity(targets),
            metrics={"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": val["accuracy"],
                     "parent_test_accuracy": before["accuracy"]},
        )
    return new.version
