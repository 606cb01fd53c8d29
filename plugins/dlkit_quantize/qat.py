"""Quantization-aware training: fine-tune the torch model with fake quantization, then QDQ.

Every Linear and Conv layer computes, during a few epochs of the supervised trainer, with the
quantization onnxruntime will apply (straight-through gradients, torch's fake-quantize ops):
weights int8, symmetric, one scale per output channel (``max|w| / 127``, recomputed each step),
input activations uint8 with a per-tensor range tracked as a moving average (torch.ao's
``FakeQuantize`` with ``MovingAverageMinMaxObserver``). The weights learn to sit where int8 loses
least. Afterwards the weights are baked onto their int8 grid, the model is exported to ONNX and
quantized statically (QDQ, per channel, uint8 activations, calibrated): the same scheme it was
trained under, so onnxruntime's int8 weights are the trained ones (exactly, unless a batch norm is folded
into the layer afterwards).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from dlkit import DlkitError, InputError

LR_SCALE = 0.1  # fine-tuning: a tenth of the parent's learning rate


def build_qat(version, candidate, out: Path, calibration, log) -> None:
    """Fine-tune ``version`` with fake quantization and write its QDQ graph at ``out``."""
    from dlkit import evaluation_data, load_model

    from .graph import preprocess
    from .methods import quantize_static

    if not version.has_weights():
        raise InputError(f"model {version.ref} has no PyTorch weights: QAT fine-tunes the torch model")
    module, spec = load_model(version)
    data = evaluation_data(version)
    epochs = int(candidate.options.get("epochs", 3))
    log(f"QAT: {epochs} epoch(s) with fake-quantized weights and activations")
    handles = fake_quantize(module)
    module = fine_tune(module, spec, version, data, epochs)
    for remove in handles:
        remove()
    module.eval()
    float_path = out.with_name(f"{out.stem}-float.onnx")
    export_float(module, version, float_path)
    prepared = out.with_name(f"{out.stem}-prepared.onnx")
    preprocess(float_path, prepared)
    quantize_static(prepared, out, calibration, format="qdq", calibrate="minmax", per_channel=True)


def fake_quantize(module) -> list:
    """Fake-quantize the weights and inputs of every Linear/Conv of ``module``; returns the
    functions that remove it (baking each weight onto its int8 grid)."""
    import torch
    from torch import nn
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    removers = []
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        act = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                           qscheme=torch.per_tensor_affine)
        layer.add_module("input_fake_quant", act)
        pre = layer.register_forward_pre_hook(lambda m, args: (m.input_fake_quant(args[0]), *args[1:]))
        torch.nn.utils.parametrize.register_parametrization(layer, "weight", weight_fake_quant()())

        def remove(layer=layer, pre=pre):
            pre.remove()
            del layer.input_fake_quant
            torch.nn.utils.parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)

        removers.append(remove)
    if not removers:
        raise InputError("QAT: the model has no Linear or Conv layer to quantize")
    return removers


@functools.cache
def weight_fake_quant():
    """The weight fake-quantizer's class (built on first use: torch is not imported with this module)."""
    import torch

    class WeightFakeQuant(torch.nn.Module):
        """int8 symmetric per output channel, scale ``max|w| / 127``: onnxruntime's weight scheme."""

        def forward(self, w):
            scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp(min=1e-12) / 127
            zero = torch.zeros(len(scale), dtype=torch.int32, device=w.device)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)

    return WeightFakeQuant


def fine_tune(module, spec, version, data, epochs: int):
    """``epochs`` of the supervised trainer from the parent's own options, at a tenth of its rate."""
    from dlkit import CHECKPOINT, SUPERVISED_DEFAULTS, SupervisedTrainer, TrainRun

    parent = {k: v for k, v in (version.meta.get("train") or {}).items() if k in SUPERVISED_DEFAULTS}
    config = {**SUPERVISED_DEFAULTS, **parent, "epochs": epochs, "patience": 0, "device": "cpu",
              "restore_best": False}
    config["lr"] = config["lr"] * LR_SCALE
    with tempfile.TemporaryDirectory(prefix="dlkit-qat-") as workdir:
        run = TrainRun(model=module.train(), spec=spec, data=data, config=config, seed=int(version.meta.get("seed", 0)),
                       workdir=Path(workdir), quiet=True, task=version.meta.get("task"))
        SupervisedTrainer(run).fit()
        (Path(workdir) / CHECKPOINT).unlink(missing_ok=True)
    return run.model.cpu()


def export_float(module, version, path: Path) -> None:
    """The fine-tuned float model as ONNX, exported like its parent (the architecture's or the
    task's graph: same inputs, outputs and dynamic axes)."""
    import torch

    from dlkit import get_registry

    meta = version.meta
    spec = get_registry().model(meta["arch"])
    graph = spec.export(module, meta) if spec.export is not None else get_registry().task_of(meta).export(module, meta)
    axes = graph.axes()
    from .graph import quiet

    try:
        with quiet():
            torch.onnx.export(graph.module.eval(), tuple(graph.example_inputs.values()), str(path), dynamo=False,
                              input_names=list(graph.example_inputs), output_names=graph.output_names,
                              dynamic_axes=axes, opset_version=17, do_constant_folding=True)
    except Exception as exc:  # the exporter raises its own types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DlkitError(f"QAT: export of the fine-tuned {version.ref} failed: {first}") from exc
