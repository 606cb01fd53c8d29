"""Third-party plugins, for real: the pip-installed example package through each hook and the
whole chain (train, evaluate, export, quantize, distill into it, serve, sparsify), dlkit's pytest
plugin in a plugin author's test suite, and broken plugin distributions that dlkit must survive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from dlkit.store.repository import ModelRepository
from dlkit.testing import (
    BROKEN_PLUGINS,
    check_build,
    check_command,
    check_compressor,
    check_dataset,
    check_trained,
    install_throwaway,
    run_cli,
)

SMALL_TCN = ["--set", "channels=[16,16]", "--epochs", "1", "--batch-size", "64"]


def installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def example_installed():
    assert installed("dlkit-plugin-example"), \
        "the example plugin is not installed: pip install -e examples/dlkit-plugin-example (make test does)"


@pytest.fixture(scope="module")
def tcn_repo(tmp_path_factory) -> Path:
    """A repository holding ``tcn-digits``: the example's architecture trained on digits."""
    root = tmp_path_factory.mktemp("tcn") / "models"
    run_cli("train", "tcn", "--repo", root, *SMALL_TCN)
    return root


@pytest.fixture
def tcn(tcn_repo, tmp_path, monkeypatch) -> ModelRepository:
    """A writable copy of ``tcn_repo``, set as $DLKIT_REPO."""
    root = tmp_path / "models"
    shutil.copytree(tcn_repo, root)
    monkeypatch.setenv("DLKIT_REPO", str(root))
    return ModelRepository(root)


def example_info() -> dict:
    plugins = run_cli("plugins", "--json").json()["plugins"]
    return next(p for p in plugins if p["name"] == "example")


# -- each hook, through the example plugin ------------------------------------------------------------
def test_hook_register_models(tcn, dlkit_registry):
    spec = dlkit_registry.model("tcn")
    assert (spec.plugin, spec.trainer, spec.input_kinds) == ("example", "focal", {"sequence", "image"})
    info = example_info()
    assert info["distribution"] == "dlkit-plugin-example" and info["version"] == "0.1.0" and not info["builtin"]
    assert info["registered"]["models"] == ["tcn"]
    version = tcn.resolve("tcn-digits")
    assert (version.meta["arch"], version.meta["plugin"]) == ("tcn", "example")
    check_trained(version)  # reloads through the plugin's builder with the stored metrics

    import torch

    module, ds = check_build("tcn", "chirps", {"channels": [8]})
    with torch.inference_mode():  # the time axis is free: a shorter sequence works too
        assert module(torch.from_numpy(ds.x_test[:4, :20])).shape == (4, 3)
    refused = run_cli("train", "tcn", "--data", "blobs", "--name", "tabular", expect=2)
    assert "does not accept tabular" in refused.stderr
    assert "tabular" not in tcn.names()


def test_hook_register_trainers(tcn, dlkit_registry):
    import torch
    import torch.nn.functional as F
    from dlkit_plugin_example.focal import focal_loss

    assert dlkit_registry.trainer("focal").defaults["gamma"] == 2.0
    logits, target = torch.randn(32, 5, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 5
    for smoothing in (0.0, 0.1):
        assert torch.allclose(focal_loss(logits, target, 0.0, smoothing),
                              F.cross_entropy(logits, target, label_smoothing=smoothing), atol=1e-6)
    assert focal_loss(logits, target, 2.0) < F.cross_entropy(logits, target)
    meta = tcn.resolve("tcn-digits").meta
    assert meta["trainer"] == "focal" and meta["train"]["gamma"] == 2.0
    bad = run_cli("train", "tcn", "--set", "gamma=-1", "--name", "bad-gamma", "--epochs", "1", expect=2)
    assert "train.gamma" in bad.stderr and "bad-gamma" not in tcn.names()


def test_hook_register_compressors(tcn):
    from dlkit.store.weights import load_tensors

    source = tcn.resolve("tcn-digits")
    pruned = check_compressor("sparsify", source, tcn, {"amount": 0.6, "scope": "layer", "name": "tcn-sparse"})
    meta = pruned.meta
    assert (pruned.name, meta["method"], meta["compression"]["scope"]) == ("tcn-sparse", "sparsify", "layer")
    weights = {k: v for k, v in load_tensors(pruned.weights_path).items() if k.endswith("weight") and v.ndim >= 2}
    assert len(weights) == meta["compression"]["layers"]
    for key, w in weights.items():  # every Linear/Conv layer lost round(60%) of its weights, exactly
        assert int((w == 0).sum()) == round(0.6 * w.numel()), key
    assert meta["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert meta["metrics"]["parent_test_accuracy"] == pytest.approx(source.meta["metrics"]["test_accuracy"], abs=0.01)
    check_trained(pruned)  # the stored accuracy is the pruned weights' accuracy
    with pytest.raises(Exception, match="--amount"):
        check_compressor("sparsify", source, tcn, {"amount": 1.0})
    assert tcn.names() == ["tcn-digits", "tcn-sparse"]


def test_hook_register_datasets(tcn):
    ds = check_dataset("chirps")
    assert (ds.input_spec["shape"], ds.labels, ds.input_spec["kind"]) == ([32, 1], ["rising", "falling", "steady"],
                                                                          "sequence")
    assert check_dataset("chirps", {"n": 120, "steps": 12}).input_spec["shape"] == [12, 1]
    assert example_info()["registered"]["datasets"] == ["chirps"]
    bad = run_cli("train", "tcn", "--data", "chirps", "--set", "data.steps=3", expect=2)
    assert "data.steps" in bad.stderr and "Traceback" not in bad.stderr
    assert tcn.names() == ["tcn-digits"]


def test_hook_register_commands(tcn):
    assert "Magnitude-prune" in check_command("sparsify").stdout
    assert example_info()["registered"]["commands"] == ["sparsify"]
    out = run_cli("sparsify", "tcn-digits", "--amount", "0.5", "--json").json()
    assert (out["model"], out["parent"], out["method"]) == ("tcn-digits-sparse", {"name": "tcn-digits", "version": 1},
                                                          "sparsify")
    assert out["sparsity"] == pytest.approx(0.5, abs=0.01)
    missing = run_cli("sparsify", "nothing-here", expect=2)
    assert "no model 'nothing-here'" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert "--amount" in run_cli("sparsify", "tcn-digits", "--amount", "1.5", expect=2).stderr
    assert tcn.names() == ["tcn-digits", "tcn-digits-sparse"]


# -- the whole chain on the example's architecture ------------------------------------------------------
def serve_and_infer(repo: ModelRepository, name: str, x: np.ndarray) -> dict:
    """Start ``dlkit serve`` on a free loopback port, POST one v2 infer request, stop it."""
    env = {**os.environ, "DLKIT_REPO": str(repo.root)}
    proc = subprocess.Popen([sys.executable, "-m", "dlkit", "serve", "--port", "0", "--grpc-port", "0",
                             "--models", name, "--no-access-log"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            found = re.search(r"on (http://\S+:\d+)", line)
            if found:
                break
        else:
            raise AssertionError(f"dlkit serve did not start: {''.join(lines)}")
        url = found.group(1)
        with urllib.request.urlopen(f"{url}/v2/models/{name}", timeout=30) as r:
            inputs = json.load(r)["inputs"]
        body = {"inputs": [{"name": inputs[0]["name"], "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        request = urllib.request.Request(f"{url}/v2/models/{name}/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in json.load(r)["outputs"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_full_chain(tcn):
    """Every dlkit command works with a third-party architecture, with no change to dlkit:
    evaluate, export onnx, evaluate through onnxruntime, quantize, distill into it, serve."""
    from dlkit.infer.evaluate import evaluation_data
    from dlkit.infer.session import Session

    lineage = {"name": "tcn-digits", "version": 1}
    torch_eval = run_cli("evaluate", "tcn-digits", "--json").json()
    one_sample = 1 / torch_eval["samples"] + 1e-9
    assert torch_eval["accuracy"] == pytest.approx(tcn.resolve("tcn-digits").meta["metrics"]["test_accuracy"],
                                                   abs=one_sample)
    run_cli("export", "onnx", "tcn-digits", "--json")
    assert tcn.resolve("tcn-digits").has_onnx()
    onnx_eval = run_cli("evaluate", "tcn-digits", "--runtime", "onnx", "--json").json()
    assert onnx_eval["accuracy"] == pytest.approx(torch_eval["accuracy"], abs=one_sample)

    run_cli("quantize", "tcn-digits", "--method", "dynamic", "--name", "tcn-int8", "--measure-seconds", "0.2", "--json")
    int8 = tcn.resolve("tcn-int8")
    assert (int8.meta["parent"], int8.meta["arch"], int8.has_onnx()) == (lineage, "tcn", True)
    assert run_cli("evaluate", "tcn-int8", "--runtime", "onnx", "--json").json()["samples"] == torch_eval["samples"]

    run_cli("distill", "tcn-digits", "--student", "tcn", "--set", "channels=[8]", "--epochs", "1",
            "--name", "tcn-student", "--json")
    student = tcn.resolve("tcn-student")
    assert (student.meta["arch"], student.meta["method"], student.meta["parent"]) == ("tcn", "distill", lineage)
    check_trained(student)

    x = evaluation_data(tcn.resolve("tcn-digits")).x_test[:3]
    served = serve_and_infer(tcn, "tcn-digits", x)
    session = Session(tcn.resolve("tcn-digits").onnx_path, "cpu")
    np.testing.assert_allclose(served["logits"], session.run({session.inputs[0].name: x})["logits"], atol=1e-5)


def test_dlkit_pytest_plugin_in_a_plugin_authors_suite(tmp_path):
    """dlkit's fixtures reach another project's tests through the pytest11 entry point alone."""
    (tmp_path / "test_mine.py").write_text(
        "import os\n"
        "import pytest\n\n"
        "@pytest.mark.dlkit_plugin('example')\n"
        "def test_each_model(dlkit_model, dlkit_repo, dlkit_registry):\n"
        "    assert os.environ['DLKIT_REPO'] == str(dlkit_repo.root) and not dlkit_repo.names()\n"
        "    assert dlkit_registry.model(dlkit_model).plugin == 'example'\n\n"
        "def test_every_model(dlkit_model):\n"
        "    pass\n\n"
        "def test_cli(dlkit_cli):\n"
        "    plugins = dlkit_cli('plugins', '--json').json()['plugins']\n"
        "    assert 'example' in [p['name'] for p in plugins]\n"
        "    assert dlkit_cli('show', 'nothing', expect=2).stderr.startswith('error: ')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    ran = set(re.findall(r"::(test_\w+(?:\[[\w-]+\])?) PASSED", done.stdout))
    # dlkit_model: the example's one architecture under the marker, every architecture without it
    every = {f"test_every_model[{name}]" for name in ("mlp", "cnn", "rnn", "tcn")}
    assert {"test_each_model[tcn]", "test_cli"} | every <= ran, done.stdout[-3000:]
    assert not any(r.startswith("test_each_model[") and r != "test_each_model[tcn]" for r in ran)


# -- broken plugins, installed for real -------------------------------------------------------------------
def dlkit_proc(*args: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """``python -m dlkit ARGS`` in a fresh process, with ``site`` on PYTHONPATH."""
    full = {k: v for k, v in os.environ.items() if k not in ("DLKIT_STRICT_PLUGINS", "DLKIT_PLUGINS")}
    full.update(PYTHONPATH=str(site or ""), **env)
    return subprocess.run([sys.executable, "-m", "dlkit", *args], capture_output=True, text=True, env=full,
                          timeout=300)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for name, (source, _) in BROKEN_PLUGINS.items():
        install_throwaway(site, name, source)
    return site


def test_broken_plugins_leave_the_cli_working(broken_site, tmp_path):
    help_ = dlkit_proc("--help", site=broken_site)
    assert help_.returncode == 0, help_.stderr
    assert "sparsify" in help_.stdout and "models" in help_.stdout  # the healthy plugin's command is there
    for name, (_, error) in BROKEN_PLUGINS.items():
        assert f"warning: plugin {name!r} " in help_.stderr and error in help_.stderr, name
    assert "Traceback" not in help_.stderr

    listed = dlkit_proc("plugins", "--json", site=broken_site)
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    for name, (_, error) in BROKEN_PLUGINS.items():
        assert error in plugins[name]["error"] and plugins[name]["registered"] == {}, plugins[name]
        assert plugins[name]["distribution"] == f"dlkit-throwaway-{name.replace('_', '-')}"
    assert plugins["mlp"]["registered"] == {"models": ["mlp"]} and plugins["mlp"]["error"] is None
    assert plugins["example"]["error"] is None
    for dropped in ("half-registered", "hijacker-model"):  # a failing plugin keeps nothing it registered
        assert not any(dropped in str(p["registered"]) for p in plugins.values()), dropped
    table = dlkit_proc("plugins", site=broken_site, COLUMNS="250")
    assert table.returncode == 0 and all(name in table.stdout for name in BROKEN_PLUGINS)

    models = dlkit_proc("models", "--json", "--repo", str(tmp_path / "models"), site=broken_site)
    assert models.returncode == 0 and json.loads(models.stdout)["models"] == []  # not the hijacker's
    trained = dlkit_proc("train", "mlp", "--data", "blobs", "--epochs", "1", "--set", "hidden=[8]",
                         "--repo", str(tmp_path / "models"), "--json", site=broken_site)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["model"] == "mlp-blobs"
    quiet = dlkit_proc("--help", site=broken_site, DLKIT_PLUGINS="example")  # the allowlist leaves them out
    assert quiet.returncode == 0 and quiet.stderr == "" and "sparsify" in quiet.stdout


@pytest.mark.parametrize("name", sorted(BROKEN_PLUGINS))
def test_strict_mode_makes_a_broken_plugin_an_error(name, tmp_path):
    source, error = BROKEN_PLUGINS[name]
    site = install_throwaway(tmp_path / "site", name, source)
    lenient = dlkit_proc("models", "--repo", str(tmp_path / "models"), site=site)
    assert lenient.returncode == 0 and f"plugin {name!r}" in lenient.stderr
    strict = dlkit_proc("models", "--repo", str(tmp_path / "models"), site=site, DLKIT_STRICT_PLUGINS="1")
    assert strict.returncode == 1
    last = strict.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: plugin {name!r} ") and error in last and "Traceback" not in strict.stderr


def test_a_plugin_may_not_take_a_builtin_plugins_name(tmp_path):
    site = install_throwaway(tmp_path / "site", "mlp", "raise RuntimeError('must never be imported')\n")
    listed = dlkit_proc("plugins", "--json", site=site)
    assert listed.returncode == 0
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["mlp"]["registered"] == {"models": ["mlp"]} and plugins["mlp"]["distribution"] == "dlkit"
    clash = plugins["mlp (dlkit-throwaway-mlp)"]
    assert "already taken by dlkit" in clash["error"]
    assert "must never be imported" not in listed.stderr
