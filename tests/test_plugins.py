"""The plugin manager: built-ins through entry points, the allowlist and the blocklist, failure
isolation and strict mode, duplicate names, misspelled hooks.

Third-party plugins here are real distributions: a ``*.dist-info`` with ``entry_points.txt`` and
the module beside it, found by importlib.metadata on ``sys.path`` (in-process) or ``PYTHONPATH``
(in a real ``dlkit`` process), exactly as pip would have left them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import dlkit
from dlkit.errors import InputError, PluginError
from dlkit.plugins import Plugins
from dlkit.registry import Registry, make_register
from dlkit.testing import BROKEN_PLUGINS, install_throwaway

BUILTIN_MODELS = {"mlp": "mlp", "cnn": "cnn", "rnn": "rnn"}

GOOD = '''from dlkit import hookimpl


def build(hparams, input_spec, num_classes):
    import math

    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_spec["shape"]), num_classes))


@hookimpl
def register_models(register):
    register("tiny", build, input_kinds={"tabular", "image"}, description="one linear layer")
'''
TWIN = '''from dlkit import hookimpl


@hookimpl
def register_models(register):
    register("twin", print, input_kinds={"tabular"})
'''
OURS = {"goodone": GOOD, "twin_a": TWIN, "twin_b": TWIN, **{n: s for n, (s, _) in BROKEN_PLUGINS.items()}}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for name, source in OURS.items():
        install_throwaway(site, name, source)
    return site


@pytest.fixture
def on_path(site, monkeypatch):
    """The throwaway distributions installed for this process; their modules forgotten afterwards."""
    for var in ("DLKIT_PLUGINS", "DLKIT_DISABLE_PLUGINS", "DLKIT_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in OURS:
        sys.modules.pop(name, None)


def load(capsys) -> tuple[Plugins, str]:
    plugins = Plugins()
    plugins.load()
    return plugins, capsys.readouterr().err


def test_builtins_register_through_the_entry_point_group():
    eps = {ep.name: ep for ep in metadata.entry_points(group="dlkit")}
    for name in ("mlp", "cnn", "rnn"):
        assert eps[name].value == f"dlkit_{name}" and eps[name].dist.name == "dlkit"
    plugins = Plugins()
    plugins.load()
    for plugin, model in BUILTIN_MODELS.items():
        info = plugins.infos[plugin]
        assert (info.builtin, info.distribution, info.version, info.error) == (True, "dlkit", dlkit.__version__, None)
        assert info.registered["models"] == [model] and "register_models" in info.hooks
        assert plugins.registry.model(model).plugin == plugin
    core = plugins.infos["core"].registered
    assert core["trainers"] == ["supervised"] and {"digits", "csv", "npz", "image-folder"} <= set(core["datasets"])


def test_a_third_party_plugin_registers_like_a_builtin(on_path, capsys):
    plugins, _ = load(capsys)
    info = plugins.infos["goodone"]
    assert (info.builtin, info.distribution, info.version) == (False, "dlkit-throwaway-goodone", "0.1")
    assert info.registered == {"models": ["tiny"]} and plugins.registry.model("tiny").plugin == "goodone"


def test_broken_plugins_are_reported_by_name_and_skipped(on_path, capsys):
    plugins, err = load(capsys)
    import click

    # Commands are added when the CLI is first used; 'hijacker' tries to replace `dlkit models`.
    cli = click.Group(commands={"models": click.Command("models", callback=lambda: None)})
    plugins.add_commands(cli)
    err += capsys.readouterr().err
    assert cli.commands["models"].callback() is None
    for name, (_, message) in BROKEN_PLUGINS.items():
        assert f"dlkit: warning: plugin {name!r} " in err and message in err, name
        assert plugins.infos[name].error and plugins.infos[name].registered == {}
    assert "half-registered" not in plugins.registry.names("model")  # a failed hook leaves nothing behind
    assert plugins.registry.model("mlp").plugin == "mlp"  # the duplicate did not take the built-in's name
    assert plugins.registry.model("tiny").plugin == "goodone"  # and the healthy ones are all there
    assert "Traceback" not in err


def test_duplicate_names_fail_naming_both_plugins(on_path, capsys):
    plugins, err = load(capsys)
    assert plugins.registry.model("twin").plugin == "twin_a"
    assert "model 'twin' is registered by both plugin 'twin_a' and plugin 'twin_b'" in plugins.infos["twin_b"].error
    assert "plugin 'twin_b'" in err

    registry = Registry()
    make_register(registry, "trainer", "first")("fit", print)
    with pytest.raises(PluginError, match="trainer 'fit' is registered by both plugin 'first' and plugin 'second'"):
        make_register(registry, "trainer", "second")("fit", print)


def test_misspelled_hook_is_reported(on_path, capsys):
    plugins, err = load(capsys)
    assert "unknown hook 'register_model' (did you mean 'register_models'?)" in plugins.infos["misspelled"].error
    assert "plugin 'misspelled'" in err and "never" not in plugins.registry.names("model")


def test_strict_mode_raises(on_path, monkeypatch):
    monkeypatch.setenv("DLKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin '\w+' "):
        Plugins().load()


@pytest.mark.parametrize("allow, loaded, absent", [
    ("", set(), {"goodone", "twin_a", "example"}),  # empty: built-ins only
    ("goodone", {"goodone"}, {"twin_a", "broken_import", "example"}),
    ("goodone, twin_b", {"goodone", "twin_b"}, {"twin_a"}),
])
def test_allowlist(on_path, monkeypatch, capsys, allow, loaded, absent):
    monkeypatch.setenv("DLKIT_PLUGINS", allow)
    plugins, err = load(capsys)
    assert err == ""  # the broken plugins were never imported
    assert loaded <= set(plugins.infos) and not absent & set(plugins.infos)
    assert {"core", "mlp", "cnn", "rnn"} <= set(plugins.infos)  # built-ins always load
    if "twin_b" in loaded:
        assert plugins.registry.model("twin").plugin == "twin_b"


def test_disable_list_blocks_builtins_and_third_party(on_path, monkeypatch, capsys):
    monkeypatch.setenv("DLKIT_PLUGINS", "goodone")
    monkeypatch.setenv("DLKIT_DISABLE_PLUGINS", "rnn,goodone")
    plugins, _ = load(capsys)
    assert "rnn" not in plugins.infos and "goodone" not in plugins.infos
    names = plugins.registry.names("model")
    assert {"mlp", "cnn"} <= set(names) and "rnn" not in names and "tiny" not in names
    with pytest.raises(InputError, match="unknown model 'rnn'"):
        plugins.registry.model("rnn")


@pytest.mark.parametrize("options, problem", [
    # Kinds and tasks are open (a plugin may add "text" or a task of its own): a name is refused
    # only when it cannot be one.
    ({"input_kinds": {"Pixels!"}}, "input_kinds must be a non-empty set of kind names"),
    ({}, "input_kinds must be a non-empty set of kind names"),
    ({"input_kinds": {"image"}, "task": ""}, "task must be a task name"),
    ({"input_kinds": {"image"}, "colour": "red"}, "unexpected keyword argument 'colour'"),
])
def test_bad_model_registrations_are_refused(options, problem):
    register = make_register(Registry(), "model", "sloppy")
    with pytest.raises(PluginError, match=f"plugin 'sloppy': bad registration of model 'm': .*{problem}"):
        register("m", print, **options)
    with pytest.raises(PluginError, match="must be registered with a callable"):
        register("m", "not callable", input_kinds={"image"})


# -- the command line, in real processes --------------------------------------------------------------
def dlkit_proc(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DLKIT_")}
    return subprocess.run([sys.executable, "-m", "dlkit", *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": str(site), **env})


def test_cli_keeps_working_beside_a_broken_plugin(tmp_path):
    site = tmp_path / "site"
    install_throwaway(site, "goodone", GOOD)
    install_throwaway(site, "broken_import", BROKEN_PLUGINS["broken_import"][0])

    listed = dlkit_proc(site, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "dlkit: warning: plugin 'broken_import' failed to import: RuntimeError: boom at import" in listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["goodone"]["registered"] == {"models": ["tiny"]} and plugins["broken_import"]["error"]
    table = dlkit_proc(site, "plugins", COLUMNS="200")
    assert table.returncode == 0 and "broken_import" in table.stdout and "tiny" in table.stdout

    strict = dlkit_proc(site, "plugins", DLKIT_STRICT_PLUGINS="1")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines()[-1].startswith("error: plugin 'broken_import' failed to import")

    only_builtins = dlkit_proc(site, "plugins", "--json", DLKIT_PLUGINS="")
    assert only_builtins.returncode == 0 and only_builtins.stderr == ""
    assert {p["name"] for p in json.loads(only_builtins.stdout)["plugins"]} == \
        {"core", "mlp", "cnn", "rnn", "gan", "quantize", "distill", "prune", "cluster"}

    no_rnn = dlkit_proc(site, "train", "rnn", DLKIT_PLUGINS="", DLKIT_DISABLE_PLUGINS="rnn",
                        DLKIT_REPO=str(tmp_path / "models"))
    assert no_rnn.returncode == 2 and "unknown model 'rnn'" in no_rnn.stderr
