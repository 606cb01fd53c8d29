"""Conformance checks for what plugins register, as plain functions and as a pytest plugin.

dlkit's own tests run these checks on the built-in plugins; a plugin author runs the same
checks on their own registrations::

    from dlkit.testing import check_model

    def test_tcn_conforms(dlkit_repo):
        check_model("tcn", repo=dlkit_repo)

Installed with dlkit, this module is a pytest plugin (the ``pytest11`` entry point), so its
fixtures need no import: ``dlkit_repo`` (an empty repository, also ``$DLKIT_REPO``),
``dlkit_registry`` and ``dlkit_cli`` (the ``dlkit`` command line, run in-process). A test that
takes a ``dlkit_model`` argument runs once per registered architecture, or once per
architecture of the plugins named by ``@pytest.mark.dlkit_plugin("NAME", ...)``.

pytest imports this module in every run of every project that has dlkit installed: it
imports nothing heavy at top level, and the checks import torch only when they run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The data set each kind of input is checked on: small, and registered by dlkit itself.
DATA_FOR_KIND = {"image": "digits", "sequence": "waves", "tabular": "blobs"}
# One epoch, small batches, no early stopping: enough to exercise a trainer end to end.
QUICK_TRAIN = {"epochs": 1, "batch_size": 64, "patience": 0}
ATOL, RTOL = 1e-4, 1e-3  # ONNX vs torch outputs (float32, different kernels)


# -- helpers ------------------------------------------------------------------------------------
@dataclass
class CliResult:
    """What one in-process ``dlkit`` invocation printed and returned."""

    args: list[str]
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The one JSON object a ``--json`` command prints."""
        return json.loads(self.stdout)


def run_cli(*args: str, expect: int | None = 0) -> CliResult:
    """Run ``dlkit ARGS...`` in this process; fail unless it exits with ``expect`` (None: any code)."""
    from click.testing import CliRunner

    from dlkit.cli.group import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="dlkit")
    out = CliResult(list(map(str, args)), result.exit_code, result.stdout, result.stderr)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"dlkit {' '.join(out.args)} raised") from result.exception
    if expect is not None and out.exit_code != expect:
        raise AssertionError(f"dlkit {' '.join(out.args)} exited {out.exit_code}, expected {expect}\n"
                             f"stdout: {out.stdout[-2000:]}\nstderr: {out.stderr[-2000:]}")
    return out


def default_data(spec) -> str:
    """A small dlkit data set the architecture accepts (image data first: every kind of model
    that reads images is checked on real digits)."""
    for kind in ("image", "sequence", "tabular"):
        if kind in spec.input_kinds:
            return DATA_FOR_KIND[kind]
    return "digits"  # noise-input (generative) models learn to produce the data set's images


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _repository(repo):
    from dlkit.store.repository import ModelRepository

    return repo if isinstance(repo, ModelRepository) else ModelRepository(repo)


# -- data sets ------------------------------------------------------------------------------------
def check_dataset(name: str, options: dict | None = None, seed: int = 0):
    """Load a registered data set and check what every model relies on; returns the Dataset."""
    import numpy as np

    from dlkit.data.load import load_dataset

    ds = load_dataset(name, dict(options or {}), seed)
    spec = ds.input_spec
    assert isinstance(spec.get("kind"), str) and spec["kind"], f"{name}: input_spec has no kind"
    if ds.targets == "labels":
        assert ds.num_classes >= 2 and len(set(ds.labels)) == ds.num_classes, f"{name}: labels {ds.labels} must be distinct"
    else:
        assert ds.target_spec and len(ds.target_spec["names"]) == len(ds.target_spec["std"]), \
            f"{name}: numeric targets need a target_spec with names, mean and std"
    for part in ("train", "val", "test"):
        x, y = ds.split(part)
        assert len(x) == len(y) > 0, f"{name}: the {part} split has {len(x)} inputs and {len(y)} labels"
        assert x.dtype == np.float32, f"{name}: {part} inputs are {x.dtype}, expected float32"
        assert list(x.shape[1:]) == list(spec["shape"]), \
            f"{name}: {part} inputs have shape {list(x.shape[1:])}, input_spec says {spec['shape']}"
        if ds.targets == "labels":
            assert y.dtype.kind in "iu" and y.min() >= 0 and y.max() < ds.num_classes, \
                f"{name}: {part} labels must be class indices below {ds.num_classes}"
        else:
            assert y.dtype == np.float32 and y.shape == (len(x), ds.num_outputs), \
                f"{name}: {part} targets must be float32 of shape (N, {ds.num_outputs})"
    again = load_dataset(name, dict(options or {}), seed)
    assert np.array_equal(again.x_test, ds.x_test) and np.array_equal(again.y_test, ds.y_test), \
        f"{name}: the same seed must give the same split"
    return ds


# -- models ---------------------------------------------------------------------------------------
def check_build(name: str, data: str | None = None, hparams: dict | None = None):
    """Build ``name`` for a data set and run a forward pass; returns (module, dataset)."""
    import torch

    from dlkit.data.load import load_dataset
    from dlkit.training.build import build_model, check_compatible
    from dlkit.plugins import get_registry
    from dlkit.store.recipe import check_options

    spec = get_registry().model(name)
    ds = load_dataset(data or default_data(spec))
    check_compatible(spec, ds.input_spec, ds.name)
    torch.manual_seed(0)
    module = build_model(spec, check_options("model", dict(hparams or {}), spec.defaults), ds.input_spec,
                         ds.num_outputs, ds.target_spec)
    assert isinstance(module, torch.nn.Module), f"{name}: build returned {type(module).__name__}, not an nn.Module"
    if get_registry().task(spec.task).loss is not None:  # trained on targets: one output per class or value
        module.eval()
        with torch.inference_mode():
            out = module(torch.from_numpy(ds.x_test[:5]))
        assert tuple(out.shape) == (5, ds.num_outputs), \
            f"{name}: a batch of 5 gave outputs of shape {tuple(out.shape)}, expected (5, {ds.num_outputs})"
        assert torch.isfinite(out).all(), f"{name}: non-finite outputs"
    return module, ds


def check_train_step(module, dataset, task: str = "classification") -> None:
    """One optimizer step on the task's loss: every trainable parameter gets a finite gradient
    (none is left out of the graph), and the step changes the outputs."""
    import torch

    from dlkit.plugins import get_registry

    spec = get_registry().task(task)
    x = torch.from_numpy(dataset.x_train[:32])
    y = torch.as_tensor(dataset.y_train[:32], dtype=torch.long if spec.target_dtype == "int64" else torch.float32)
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    optimizer.zero_grad()
    loss = spec.loss(module(x), y, {}, dataset)
    assert torch.isfinite(loss), f"non-finite training loss {loss.item()}"
    loss.backward()
    for pname, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"parameter {pname} gets no gradient: it is not used by forward()"
            assert torch.isfinite(p.grad).all(), f"parameter {pname} has a non-finite gradient"
    module.eval()
    with torch.inference_mode():
        before = module(x).clone()
    optimizer.step()
    with torch.inference_mode():
        after = module(x)
    assert not torch.equal(before, after), "an optimizer step did not change the outputs"


def check_weights_round_trip(module, rebuild, tmp_dir: str | Path) -> None:
    """Save ``module``'s weights with dlkit's safetensors writer, load them into ``rebuild()``
    (a freshly built module), and require identical outputs and state."""
    import torch

    from dlkit.store.weights import load_weights, save_tensors

    path = Path(tmp_dir) / "round-trip.safetensors"
    save_tensors(path, module.state_dict())
    torch.manual_seed(1)  # a different initialisation, so equality proves the load
    fresh = rebuild()
    load_weights(fresh, path)
    for key, value in module.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), f"tensor {key} differs after a save/load round trip"


def check_trained(version) -> None:
    """A stored model reloads from the repository with the metrics it was stored with."""
    from dlkit.infer.evaluate import evaluate
    from dlkit.plugins import get_registry

    meta = version.meta
    assert version.has_weights(), f"{version.ref}: no model.safetensors"
    for key in ("arch", "plugin", "hparams", "input_spec", "labels"):
        assert key in meta, f"{version.ref}: meta.json lacks {key!r}"
    task = get_registry().task_of(meta)
    if task is None or task.loss is None:
        return
    result = evaluate(version, runtime="torch")
    stored = meta["metrics"][f"test_{task.score}"]
    # Batch sizes differ from training's evaluation: allow one near-tie sample to flip a label.
    slack = 1 / result["samples"] + 1e-9 if task.target_dtype == "int64" else 1e-4 * max(1.0, abs(stored))
    assert abs(result[task.score] - stored) <= slack, \
        f"{version.ref}: reloaded test {task.score} {result[task.score]} != stored {stored}"


def export_onnx(version, repo) -> None:
    """``dlkit export onnx`` on ``version`` (the command line, so the check tracks the contract)."""
    run_cli("export", "onnx", version.ref, "--repo", str(_repository(repo).root), "--json")


def check_onnx(version, repo, samples: int = 64) -> None:
    """Export ``version`` to ONNX and run it with onnxruntime: outputs match torch's, and
    classifiers' probabilities are a softmax whose arg-max is torch's prediction."""
    import numpy as np
    import torch

    from dlkit.infer.evaluate import evaluation_data
    from dlkit.infer.session import Session
    from dlkit.plugins import get_registry
    from dlkit.training.build import load_model

    export_onnx(version, repo)
    assert version.has_onnx(), f"{version.ref}: export wrote no model.onnx"
    task = get_registry().task_of(version.meta)
    if task is None or task.loss is None:
        Session(version.onnx_path, "cpu")  # generative graphs: loading is the portable check
        return
    x, _ = evaluation_data(version).split("test")
    x = x[:samples]
    module, _ = load_model(version)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    session = Session(version.onnx_path, "cpu")
    got = session.run({session.inputs[0].name: x})
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got[task.output], expected, atol=ATOL * scale, rtol=RTOL,
                               err_msg=f"{version.ref}: ONNX {task.output} differ from torch's")
    if "probabilities" in got:
        probs = got["probabilities"]
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5, err_msg=f"{version.ref}: probabilities")
        top2 = np.sort(expected, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-3  # ignore near-ties, where float noise may flip the arg-max
        assert (probs.argmax(1) == expected.argmax(1))[clear].all(), f"{version.ref}: ONNX and torch predict differently"
    single = session.run({session.inputs[0].name: x[:1]})  # the batch axis is dynamic
    np.testing.assert_allclose(single[task.output], expected[:1], atol=ATOL * scale, rtol=RTOL)


def has_export() -> bool:
    """Whether this dlkit has ONNX export (``dlkit.export``)."""
    import importlib.util

    return importlib.util.find_spec("dlkit.export") is not None


def check_model(name: str, repo, *, data: str | None = None, hparams: dict | None = None,
                onnx: bool | None = None):
    """Every conformance check for a registered architecture; returns the trained version.

    Build and forward pass, one train step, a weights round trip, a short run of the
    architecture's own trainer into ``repo``, the reloaded metrics, and ONNX export parity and
    onnxruntime predictions (``onnx``; by default whenever dlkit has ONNX export).
    """
    from dlkit.training.build import build_model
    from dlkit.plugins import get_registry
    from dlkit.store.recipe import Recipe, check_options
    from dlkit.training.run import train

    repo = _repository(repo)
    spec = get_registry().model(name)
    module, ds = check_build(name, data, hparams)
    if get_registry().task(spec.task).loss is not None:
        check_train_step(module, ds, spec.task)
    merged = check_options("model", dict(hparams or {}), spec.defaults)
    with tempfile.TemporaryDirectory() as tmp:
        check_weights_round_trip(module, lambda: build_model(spec, merged, ds.input_spec, ds.num_classes), tmp)
    trainer = get_registry().trainer(spec.trainer)
    quick = {k: v for k, v in QUICK_TRAIN.items() if k in trainer.defaults}
    recipe = Recipe(arch=name, name=f"conformance-{name}", data={"source": data or default_data(spec)},
                    model=dict(hparams or {}), train=quick)
    version = train(recipe, repo, quiet=True).version
    assert version.meta["arch"] == name and version.meta["plugin"] == spec.plugin
    check_trained(version)
    if onnx or (onnx is None and has_export()):
        check_onnx(version, repo)
    return version


# -- tasks ----------------------------------------------------------------------------------------
def check_task(name: str, repo, *, arch: str | None = None, data: str | None = None):
    """Every conformance check for a registered task whose predictions ``predict`` prints (trained
    on targets, or like ``clustering`` by its architecture's own trainer); returns the version.

    Trains ``arch`` (default: an architecture that lists the task, tabular if one is) on ``data`` (default:
    a built-in set with the right kind of targets: ``diabetes`` for values, ``blobs`` for labels)
    with ``task=name``, then checks: the metrics carry ``test_``/``val_`` versions of the task's
    score and loss; the ONNX export matches torch; evaluate agrees through torch and onnxruntime;
    predict describes one prediction per sample; and the compressors' quality check measures the
    model with no drop against itself.
    """
    import numpy as np

    from dlkit.data.load import load_dataset
    from dlkit.infer.evaluate import evaluate, evaluation_data
    from dlkit.infer.predict import predict
    from dlkit.infer.session import Session
    from dlkit.plugins import get_registry
    from dlkit.training.run import train

    registry = get_registry()
    repo = _repository(repo)
    task = registry.task(name)
    assert task.loss is not None or task.describe is not None, \
        f"task {name!r} has neither a training loss nor a describe(): check_task is for tasks predict prints"
    archs = sorted((s for s in registry.all("model") if name in s.tasks), key=lambda s: "tabular" not in s.input_kinds)
    assert archs, f"no registered architecture lists task {name!r}"
    arch = arch or archs[0].name  # one that reads the default (tabular) data, if any does
    data = data or ("diabetes" if task.target_dtype == "float32" else "blobs")
    trainer = registry.trainer(registry.model(arch).trainer)
    quick = {**{k: v for k, v in QUICK_TRAIN.items() if k in trainer.defaults}, "epochs": 3}
    version = train(arch, repo, data=data, name=f"task-{name}-{arch}", sets=[f"task={name}"], quiet=True,
                    **quick).version
    metrics = version.meta["metrics"]
    assert version.meta["task"] == name, f"trained a {version.meta['task']!r} model, not {name!r}"
    for key in (f"test_{task.score}", f"val_{task.score}", "test_loss", "val_loss"):
        assert isinstance(metrics.get(key), float), f"task {name!r}: metrics lack {key!r} ({sorted(metrics)})"
    check_trained(version)
    check_onnx(version, repo)
    by_torch, by_onnx = evaluate(version, runtime="torch"), evaluate(version, runtime="onnx")
    assert abs(by_torch[task.score] - by_onnx[task.score]) <= 1e-4 * max(1.0, abs(by_torch[task.score])), \
        f"task {name!r}: evaluate differs between torch ({by_torch[task.score]}) and onnx ({by_onnx[task.score]})"
    ds = evaluation_data(version)
    sample = repo.root / f"task-{name}-inputs.npy"
    np.save(sample, ds.x_test[:3])
    try:
        shown = predict(version, [str(sample)])["predictions"]
    finally:
        sample.unlink()
    assert len(shown) == 3 and all(isinstance(p, dict) and "input" in p for p in shown), \
        f"task {name!r}: describe() must give one dict with an 'input' per sample, got {shown!r}"
    session = Session(version.onnx_path, "cpu")
    check = task.quality(version, load_dataset(data, {"targets": "values"} if task.target_dtype == "float32" else {}),
                         repo, session)
    row, _ = check.measure(session)
    assert check.drop(row, row) == 0, f"task {name!r}: a model's drop against itself must be 0"
    return version


# -- compressors and commands ---------------------------------------------------------------------
def check_compressor(name: str, source, repo, options: dict | None = None):
    """Run a registered compressor on ``source``: it writes a new version whose meta.json names
    its parent and method, and leaves the source untouched. Returns the new version."""
    from dlkit.plugins import get_registry
    from dlkit.store.repository import ModelVersion

    repo = _repository(repo)
    before = _digest(source.path)
    new = get_registry().compressor(name).compress(source, dict(options or {}), repo)
    assert isinstance(new, ModelVersion), f"compressor {name!r} returned {type(new).__name__}, not a ModelVersion"
    assert new.path != source.path and new.path.is_dir(), f"compressor {name!r} must write a new version"
    assert new.meta.get("parent") == {"name": source.name, "version": source.version}, \
        f"compressor {name!r}: meta parent is {new.meta.get('parent')!r}"
    assert new.meta.get("method"), f"compressor {name!r}: meta.json records no method"
    assert _digest(source.path) == before, f"compressor {name!r} changed its source {source.ref}"
    return new


def check_command(name: str) -> CliResult:
    """A plugin's subcommand is listed by ``dlkit --help`` and answers its own ``--help``."""
    listed = run_cli("--help")
    assert f"  {name} " in listed.stdout or f"  {name}\n" in listed.stdout, f"`dlkit --help` does not list {name!r}"
    return run_cli(name, "--help")


# -- throwaway plugin packages --------------------------------------------------------------------
# The ways a plugin can be broken that dlkit must survive (a warning naming the plugin; an error
# under DLKIT_STRICT_PLUGINS=1). dlkit's tests and its startup benchmark install all of them.
BROKEN_PLUGINS = {
    "broken_import": ('raise RuntimeError("boom at import")\n', "failed to import: RuntimeError: boom at import"),
    "broken_hook": ("from dlkit import hookimpl\n\n@hookimpl\ndef register_models(register):\n"
                    "    register('half-registered', print, input_kinds={'tabular'})\n"
                    "    raise ValueError('boom in hook')\n",
                    "raised in register_models: ValueError: boom in hook"),
    # Named to sort before the built-in "mlp": it must lose the name all the same.
    "aaa_duplicate": ("from dlkit import hookimpl\n\n@hookimpl\ndef register_models(register):\n"
                      "    register('mlp', print, input_kinds={'tabular'})\n",
                      "model 'mlp' is registered by both plugin 'mlp' and plugin 'aaa_duplicate'"),
    "misspelled": ("from dlkit import hookimpl\n\n@hookimpl\ndef register_model(register):\n"
                   "    register('never', print, input_kinds={'tabular'})\n",
                   "unknown hook 'register_model' (did you mean 'register_models'?)"),
    "hijacker": ("from dlkit import hookimpl\n\n@hookimpl\ndef register_models(register):\n"
                 "    register('hijacker-model', print, input_kinds={'tabular'})\n\n"
                 "@hookimpl\ndef register_commands(cli):\n"
                 "    @cli.command('models')\n    def models():\n        print('hijacked')\n",
                 "command 'models' is already provided by dlkit"),
}


def install_throwaway(site: str | Path, name: str, source: str, *, version: str = "0.1") -> Path:
    """Write module ``name`` (``source``) and a ``dlkit-throwaway-NAME`` distribution whose
    ``dlkit`` entry point loads it into ``site``: with ``site`` on ``PYTHONPATH`` it is an
    installed plugin to importlib.metadata, as if pip had put it there. Returns ``site``."""
    site = Path(site)
    site.mkdir(parents=True, exist_ok=True)
    dist = f"dlkit-throwaway-{name.replace('_', '-')}"
    (site / f"{name}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[dlkit]\n{name} = {name}\n")
    return site


# -- the pytest plugin ----------------------------------------------------------------------------
def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "dlkit_plugin(*names): limit the dlkit_model parameter to these plugins' architectures")


def pytest_generate_tests(metafunc) -> None:
    from dlkit.plugins import get_registry

    if "dlkit_task" in metafunc.fixturenames:  # every registered task trained on targets or printed by predict
        metafunc.parametrize("dlkit_task", [t.name for t in get_registry().all("task")
                                            if t.loss is not None or t.describe is not None])
    if "dlkit_model" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("dlkit_plugin")
    plugins = set(marker.args) if marker else None
    names = [s.name for s in get_registry().all("model") if plugins is None or s.plugin in plugins]
    metafunc.parametrize("dlkit_model", names)


@pytest.fixture
def dlkit_repo(tmp_path, monkeypatch):
    """An empty model repository, also set as ``$DLKIT_REPO``."""
    from dlkit.store.repository import ModelRepository

    root = tmp_path / "dlkit-models"
    monkeypatch.setenv("DLKIT_REPO", str(root))
    return ModelRepository(root)


@pytest.fixture
def dlkit_registry():
    """What the installed plugins registered."""
    from dlkit.plugins import get_registry

    return get_registry()


@pytest.fixture
def dlkit_cli():
    """``dlkit_cli("train", "tcn", "--json")``: run the command line in-process (see :func:`run_cli`)."""
    return run_cli
