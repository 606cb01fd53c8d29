"""What to export: the OnnxGraph a model describes (its architecture's, else its task's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlkit.data.random_inputs import random_in_range
from dlkit.errors import DlkitError, InputError
from dlkit.store.repository import ModelVersion

EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace with 2
@dataclass
class OnnxGraph:
    """What to export and how to feed it: returned by a ModelSpec's ``export(module, meta)``.

    :param module: the ``torch.nn.Module`` to export (eval mode); its ``forward`` takes the
        inputs positionally, in the order of ``example_inputs``.
    :param example_inputs: ``{ONNX input name: tensor}`` used to trace the graph, batch first.
        Use a batch of 2 or more: the tracer specialises sizes 0 and 1.
    :param output_names: the ONNX names of ``forward``'s outputs, in order.
    :param dynamic_axes: ``{input or output name: {axis: axis name}}``. Axis 0 of every input
        and output is the dynamic ``batch`` axis unless listed otherwise; list further dynamic
        axes here (``{"input": {1: "sequence"}}``).
    :param metadata: extra ONNX ``metadata_props`` (values stored as JSON), merged over dlkit's.
    :param sample: ``sample(batch, generator) -> {input name: tensor}``: fresh random inputs for
        the parity check (``generator`` is a seeded ``torch.Generator``). By default every float
        input is drawn from a standard normal with the example's shape and the given batch
        size, which is what a generator's latent noise is.
    """

    module: Any
    example_inputs: dict[str, Any]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    sample: Callable[[int, Any], dict[str, Any]] | None = None

    def axes(self) -> dict[str, dict[int, str]]:
        """Every input's and output's dynamic axes, the batch axis included."""
        out = {}
        for name in [*self.example_inputs, *self.output_names]:
            out[name] = {0: "batch", **self.dynamic_axes.get(name, {})}
        return out

    def random_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Fresh inputs of ``batch`` samples, as float32 numpy arrays (see ``sample``)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        if self.sample is not None:
            drawn = self.sample(batch, gen)
        else:
            drawn = {}
            for name, ex in self.example_inputs.items():
                if not ex.is_floating_point():
                    raise InputError(f"export: input {name!r} is not a float tensor; the architecture's "
                                     f"OnnxGraph must give a sample() for the parity check")
                drawn[name] = torch.randn((batch, *ex.shape[1:]), generator=gen, dtype=ex.dtype)
        return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in drawn.items()}


# -- the graph of a stored version -----------------------------------------------------------------
def classifier_graph(module, meta: dict) -> OnnxGraph:
    """The default export of a classifier: ``input`` -> ``logits``, ``probabilities``.

    Sequence inputs also get a dynamic ``sequence`` axis (axis 1), so recurrent models take
    sequences of any length.
    """
    return OnnxGraph(with_probabilities(module), {"input": example_input(meta)}, ["logits", "probabilities"],
                     sequence_axes(meta))


def example_input(meta: dict) -> Any:
    """A tracing batch for a model with one ``input``, inside its input spec's range."""
    import torch

    return torch.from_numpy(random_in_range(meta["input_spec"], EXAMPLE_BATCH, np.random.default_rng(0)))


def sequence_axes(meta: dict) -> dict[str, dict[int, str]]:
    """A dynamic ``sequence`` axis (axis 1) for sequence inputs: recurrent models take any length."""
    return {"input": {1: "sequence"}} if meta["input_spec"]["kind"] == "sequence" else {}


def with_probabilities(module):
    """Wrap a logits module so the graph also outputs softmax probabilities."""
    import torch

    class ClassifierOutputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return logits, torch.softmax(logits, dim=-1)

    return ClassifierOutputs(module).eval()


def export_graph(version: ModelVersion) -> OnnxGraph:
    """Load ``version`` into torch and describe its export (the architecture's own, or a classifier's)."""
    from dlkit.training.build import load_model

    module, spec = load_model(version)
    meta = version.meta
    if spec.export is not None:
        graph = spec.export(module, meta)
        if not isinstance(graph, OnnxGraph):
            raise DlkitError(f"architecture {spec.name!r} (plugin {spec.plugin!r}): export() returned "
                             f"{type(graph).__name__}, expected dlkit.export.OnnxGraph")
        graph.module.eval()
        return graph
    from dlkit.plugins import get_registry

    task = get_registry().task_of(meta)
    if task is None or task.export is None:
        raise InputError(f"model {version.ref} is a {meta.get('task')} model and neither architecture "
                         f"{spec.name!r} nor its task registers an export(): nothing to export")
    graph = task.export(module, meta)
    graph.module.eval()
    return graph


