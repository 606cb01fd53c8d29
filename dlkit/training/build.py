"""Building architectures from the registry and loading stored versions back into torch."""

from __future__ import annotations

from dlkit.errors import InputError
from dlkit.registry import ModelSpec


def check_compatible(spec: ModelSpec, input_spec: dict, data_name: str) -> None:
    """Refuse data an architecture cannot take, naming both."""
    kind = input_spec["kind"]
    if kind not in spec.input_kinds:
        raise InputError(
            f"architecture {spec.name!r} does not accept {kind} data ({data_name}); "
            f"it accepts: {', '.join(sorted(spec.input_kinds))}"
        )


def build_model(spec: ModelSpec, hparams: dict, input_spec: dict, num_outputs: int, target_spec: dict | None = None):
    """Build the module, wrapped so it takes raw inputs when the data set standardises them and,
    for numeric targets, returns values in the targets' units (it learns them standardised)."""
    try:
        module = spec.build(dict(hparams), input_spec, num_outputs)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"cannot build {spec.name!r} with {hparams}: {exc}") from None
    if target_spec:
        module = target_scaled(module, target_spec["mean"], target_spec["std"])
    prep = input_spec.get("preprocessing")
    if isinstance(prep, dict) and "standardize" in prep:
        module = standardized(module, prep["standardize"]["mean"], prep["standardize"]["std"])
    return module


def target_scaled(module, mean, std):
    """Wrap ``module`` so its outputs, learnt in standard deviations from the targets' mean, come
    out in the targets' units (the statistics travel with the weights and into the ONNX graph)."""
    import torch
    from torch import nn

    class TargetScaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32))

        def forward(self, x):
            return self.inner(x) * self.target_std + self.target_mean

    return TargetScaled(module)


def standardized(module, mean, std):
    """Wrap ``module`` so it standardises its input first (the statistics travel with the weights)."""
    import torch
    from torch import nn

    class Standardized(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

        def forward(self, x):
            return self.inner((x - self.mean) / self.std)

    return Standardized(module)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_model(version, device: str = "cpu"):
    """A stored version as an eval-mode torch module, with its registry spec."""
    from dlkit.store.weights import load_weights
    from dlkit.plugins import get_registry

    meta = version.meta
    if (meta.get("source") or {}).get("kind") == "torch":  # dlkit import torch: the user's own factory
        from dlkit.export.import_torch import load_imported

        module, spec = load_imported(version)
        return module.to(device).eval(), spec
    arch = meta.get("arch")
    if not arch:
        raise InputError(f"{version.path / 'meta.json'}: no 'arch' field")
    registry = get_registry()
    if arch not in registry.names("model"):
        plugin = meta.get("plugin") or "?"
        raise InputError(
            f"model {version.ref} needs architecture {arch!r} (plugin {plugin!r}), which is not installed"
        )
    if not version.has_weights():
        raise InputError(f"model {version.ref} has no PyTorch weights ({version.weights_path} is missing)")
    spec = registry.model(arch)
    outputs = int(meta.get("num_outputs", meta.get("num_classes", 0)))
    module = build_model(spec, meta.get("hparams", {}), meta["input_spec"], outputs, meta.get("target_spec"))
    load_weights(module, version.weights_path)
    return module.to(device).eval(), spec
