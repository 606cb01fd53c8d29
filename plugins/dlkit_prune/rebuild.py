"""The ``pruned`` architecture: the parent's architecture built as registered, then each pruned
layer replaced by one of its pruned size, so the stored weights load strictly.

``hparams`` of a pruned model: ``{"base": {"arch", "hparams"}, "shapes": {parameter: shape}}``
with the shapes of the *unwrapped* module (dlkit's input standardisation and target scaling wrap
it again as for any architecture). Linear, Conv1d/2d/3d and BatchNorm layers are resized: those
are what structured pruning changes.
"""

from __future__ import annotations

# dlkit's own wrappers around an architecture's module (standardised inputs, scaled targets).
WRAPPERS = ("Standardized", "TargetScaled")


def unwrapped(module):
    """The architecture's own module inside dlkit's wrappers."""
    while type(module).__name__ in WRAPPERS and hasattr(module, "inner"):
        module = module.inner
    return module


def base_spec(hparams: dict):
    from dlkit import get_registry

    base = hparams.get("base") if isinstance(hparams, dict) else None
    if not isinstance(base, dict) or "arch" not in base or not isinstance(hparams.get("shapes"), dict):
        raise ValueError("a 'pruned' model is made by `dlkit prune`: hparams need base.arch and shapes")
    if base["arch"] == "pruned":
        raise ValueError("base.arch cannot itself be 'pruned'")
    return get_registry().model(base["arch"]), base.get("hparams", {})


def build_pruned(hparams: dict, input_spec: dict, num_outputs: int):
    """The base architecture at the recorded pruned sizes."""
    spec, base_hparams = base_spec(hparams)
    module = spec.build({**spec.defaults, **base_hparams}, input_spec, num_outputs)
    resize(module, hparams["shapes"])
    return module


def resize(module, shapes: dict) -> None:
    """Replace each Linear/Conv/BatchNorm whose weight shape differs from ``shapes`` (in place)."""
    from torch import nn

    for name, layer in list(module.named_modules()):
        shape = shapes.get(f"{name}.weight")
        weight = getattr(layer, "weight", None)
        if shape is None or weight is None or list(weight.shape) == list(shape):
            continue
        has_bias = getattr(layer, "bias", None) is not None
        if isinstance(layer, nn.Linear):
            new = nn.Linear(shape[1], shape[0], bias=has_bias)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            new = type(layer)(shape[1] * layer.groups, shape[0], layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=has_bias,
                              padding_mode=layer.padding_mode)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            new = type(layer)(shape[0], eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                              track_running_stats=layer.track_running_stats)
        else:
            raise ValueError(f"layer {name} ({type(layer).__name__}) was pruned but cannot be rebuilt")
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, new)


def export_pruned(module, meta: dict):
    """The base architecture's export, else the task's (as for the base architecture itself)."""
    from dlkit import get_registry

    spec, base_hparams = base_spec(meta["hparams"])
    base_meta = {**meta, "arch": spec.name, "hparams": base_hparams}
    if spec.export is not None:
        return spec.export(module, base_meta)
    return get_registry().task_of(meta).export(module, base_meta)
