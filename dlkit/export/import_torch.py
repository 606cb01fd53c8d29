"""``dlkit import torch MODULE:FACTORY``: a PyTorch module from the user's own code, with
safetensors weights (never a pickle), stored as a version that export, quantize, distill and
serve treat like a trained one.

meta.json records ``source = {kind: torch, factory, example_input}``; :func:`load_imported`
rebuilds the module from it (``dlkit.training.build.load_model`` calls it), and the
:class:`~dlkit.registry.ModelSpec` it returns exports the module with the example input's
shapes, the first axis being the batch axis.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
from pathlib import Path

from dlkit.errors import InputError, first_line
from dlkit.store.repository import ModelRepository, check_name

DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
EXAMPLE_BATCH = 2  # the tracer specialises sizes 0 and 1


def parse_example(text: str) -> dict[str, dict]:
    """``1,4`` | ``1,10:int64`` | ``x=1,4;ids=1,8:int64`` -> ``{name: {shape, dtype}}`` (batch axis first)."""
    items = [t.strip() for t in (text or "").split(";") if t.strip()]
    if not items:
        raise InputError(f"--example-input {text!r}: give a shape such as 1,4")
    out: dict[str, dict] = {}
    for item in items:
        name, eq, rest = item.rpartition("=")
        name = name.strip() if eq else ("input" if len(items) == 1 else "")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", name or ""):
            raise InputError(f"--example-input {text!r}: several inputs need names, NAME=SHAPE;NAME2=SHAPE")
        dims, _, dtype = rest.partition(":")
        dtype = dtype.strip() or "float32"
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not shape or min(shape) < 1:
            raise InputError(f"--example-input {text!r}: {dims!r} is not a shape (positive integers, batch first: 1,4)")
        if dtype not in DTYPES:
            raise InputError(f"--example-input {text!r}: dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        if name in out:
            raise InputError(f"--example-input {text!r}: input {name!r} given twice")
        out[name] = {"shape": shape, "dtype": dtype}
    return out


def build_module(factory: str):
    """Import MODULE (current directory first, then PYTHONPATH) and call FACTORY()."""
    from torch import nn

    if not _FACTORY.match(factory or ""):
        raise InputError(f"{factory!r}: expected MODULE:FACTORY, e.g. mynet:build")
    module_name, _, attr = factory.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # what `python -c` does: the user's own code
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while importing
        raise InputError(f"{factory}: importing {module_name!r} failed ({first_line(exc, typed=True)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"{factory}: module {module_name!r} has no callable {attr!r}")
    try:
        net = fn()
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
        raise InputError(f"{factory}: {attr}() raised {first_line(exc, typed=True)}") from None
    if not isinstance(net, nn.Module):
        raise InputError(f"{factory}: {attr}() returned {type(net).__name__}, not a torch.nn.Module")
    return net.eval()


def load_strict(net, weights: Path) -> None:
    """Load a safetensors state dict; every tensor must fit (errors name the first that does not)."""
    from dlkit.store.weights import load_tensors

    state = load_tensors(weights)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"tensor {missing[0]!r} is missing" if missing else f"tensor {extra[0]!r} is not in the module"
        raise InputError(f"{weights}: weights do not fit the module: {what} "
                         f"({len(missing)} missing, {len(extra)} unexpected)")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(f"{weights}: tensor {key!r} has shape {list(state[key].shape)}, "
                             f"the module expects {list(value.shape)}")
    net.load_state_dict(state, strict=True)


def example_tensors(example: dict[str, dict], batch: int | None = None, seed: int = 0) -> dict:
    """Inputs of the example's shapes (batch axis ``batch`` when given): normal floats, 0/1 integers."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in example.items():
        shape = [batch or spec["shape"][0], *spec["shape"][1:]]
        dtype = getattr(torch, spec["dtype"])
        out[name] = (torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point
                     else torch.randint(0, 2, shape, generator=gen).to(dtype))
    return out


def _outputs(net, example: dict[str, dict], factory: str) -> list:
    import torch

    try:
        with torch.inference_mode():
            out = net(*example_tensors(example, EXAMPLE_BATCH).values())
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything
        raise InputError(f"{factory}: forward on --example-input failed ({first_line(exc, typed=True)})") from None
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise InputError(f"{factory}: forward must return a tensor or a tuple of tensors")
    return outs


def import_torch(repo: ModelRepository, factory: str, weights: str | Path, example: str | dict,
                 name: str | None = None, labels: str | list | None = None, task: str | None = None) -> dict:
    """Build FACTORY(), load ``weights`` strictly, run the example, publish the version."""
    from dlkit.store.derive import derive
    from dlkit.store.meta import import_task, parse_labels
    from dlkit.store.weights import save_tensors

    name = check_name(name or factory.rpartition(":")[2].replace("_", "-"))
    spec = parse_example(example) if isinstance(example, str) else example
    names = parse_labels(labels) if isinstance(labels, str) or labels is None else list(labels)
    task = import_task(task, names)
    weights = Path(weights)
    if not weights.is_file():
        raise InputError(f"{weights}: weights file not found")
    net = build_module(factory)
    load_strict(net, weights)
    outs = _outputs(net, spec, factory)
    input_spec = _task_input_spec(spec, outs, names, task, factory)
    with derive(repo, None, "import", name, inherit=()) as new:
        save_tensors(new.path / "model.safetensors", net.state_dict())
        new.meta.update(task=task, params=sum(p.numel() for p in net.parameters()), source={
            "kind": "torch", "factory": factory, "example_input": spec,
            "weights": str(weights.resolve()), "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()})
        if names is not None:
            new.meta.update(labels=names, num_classes=len(names))
        if input_spec is not None:
            new.meta["input_spec"] = input_spec
    version = new.version
    return {"model": version.name, "version": version.version, "path": str(version.path), "task": task,
            "labels": names, "factory": factory, "example_input": spec, "params": version.meta["params"],
            "inputs": [{"name": k, "shape": [None, *v["shape"][1:]], "dtype": v["dtype"]} for k, v in spec.items()],
            "outputs": [{"name": f"#{i}", "shape": [None, *o.shape[1:]], "dtype": str(o.dtype).removeprefix("torch.")}
                        for i, o in enumerate(outs)],
            "next": [f"dlkit export onnx {version.ref}"]}


def _task_input_spec(spec: dict, outs: list, names, task: str | None, factory: str) -> dict | None:
    """A model with a task takes one float input (the task exports it as ``input``, described by an
    input spec); labels name the classes of the first output, (batch, classes)."""
    if names is not None and (outs[0].ndim != 2 or outs[0].shape[1] != len(names)):
        raise InputError(f"--labels: {len(names)} names, but {factory}'s first output has shape "
                         f"{list(outs[0].shape)} (expected (batch, {len(names)}))")
    if task is None:
        return None
    (only, *more) = spec.values()
    if more or not only["dtype"].startswith("float"):
        raise InputError(f"--task {task}: {factory} needs one float input (got {len(spec)}); "
                         f"leave --task out to import a module of several inputs")
    sample = only["shape"][1:]
    kind = "tabular" if len(sample) == 1 else "image" if len(sample) == 3 and sample[0] in (1, 3) else "sequence"
    return {"kind": kind, "shape": sample, "dtype": only["dtype"]}  # no range: the module does not say


def load_imported(version):
    """The module and a ModelSpec for a version imported from torch (``load_model``'s hook).

    A model with a task is exported by its task (a classifier's logits and probabilities);
    one without, by :func:`_graph`: every output, the example input's names and shapes."""
    from dlkit.plugins import get_registry
    from dlkit.registry import ModelSpec

    source = version.meta["source"]
    net = build_module(source["factory"])
    load_strict(net, version.weights_path)
    example = source["example_input"]
    task = get_registry().task_of(version.meta)
    export = None if task is not None and task.export is not None else (lambda module, meta: _graph(module, example))
    spec = ModelSpec(name=f"torch:{source['factory']}", build=lambda *a: build_module(source["factory"]),
                     input_kinds=frozenset(), task=task.name if task else "", export=export,
                     plugin="dlkit import torch", description="imported with dlkit import torch")
    return net, spec


def _graph(module, example: dict):
    """Every output of the module (``output``, or ``output_0``...), the batch axis first."""
    import torch

    from dlkit.export.graph import OnnxGraph

    inputs = example_tensors(example, EXAMPLE_BATCH)
    with torch.inference_mode():
        out = module(*inputs.values())
    count = len(out) if isinstance(out, (tuple, list)) else 1
    names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return OnnxGraph(module, inputs, names,
                     sample=lambda batch, gen: example_tensors(example, batch, gen.initial_seed()))
