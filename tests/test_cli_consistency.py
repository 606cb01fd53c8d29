"""The command line explains itself: help on every option, choices as choices, --repo/--json/--debug
on the group, a readable `show`, `show-arch` listing --set keys, a missing repository named."""

from __future__ import annotations

import click

from dlkit.testing import run_cli

OWNED_ELSEWHERE = {"serve"}  # the server's options are its own module's


def commands():
    from dlkit.cli import cli

    ctx = click.Context(cli)
    stack = [(name, cli.get_command(ctx, name)) for name in cli.list_commands(ctx)]
    while stack:
        name, command = stack.pop()
        if isinstance(command, click.Group):
            stack += [(f"{name} {sub}", command.get_command(ctx, sub)) for sub in command.list_commands(ctx)]
        elif name.split()[0] not in OWNED_ELSEWHERE:
            yield name, command


def test_every_option_has_help_and_closed_sets_list_their_choices():
    missing = [f"{name} {opt.opts[0]}" for name, command in commands() for opt in command.params
               if isinstance(opt, click.Option) and not opt.help]
    assert missing == []
    # quantize checks these itself (a one-line error naming the value); help lists the choices.
    quantize = dict(commands())["quantize"]
    metavars = {p.name: p.metavar for p in quantize.params}
    assert metavars["method"] == "[auto|dynamic|static|weight-only|fp16|qat]" and metavars["fmt"] == "[qdq|qoperator]"
    assert metavars["calibrate"] == "[minmax|entropy|percentile]"
    # One provider option, one help text, wherever a command picks an onnxruntime provider.
    helps = {opt.help for _, command in commands() for opt in command.params if opt.name == "provider"}
    assert len(helps) == 1


def test_group_takes_repo_json_and_debug(trained, tmp_path, monkeypatch):
    root = str(trained.root)
    monkeypatch.setenv("DLKIT_REPO", str(tmp_path / "elsewhere"))
    listed = run_cli("--repo", root, "--json", "models").json()
    assert listed["repository"] == root and {m["name"] for m in listed["models"]} >= {"mlp-digits"}
    # The command's own --repo wins over the group's.
    assert run_cli("--repo", str(tmp_path / "x"), "models", "--repo", root, "--json").json()["repository"] == root
    assert "--debug" in run_cli("--help").stdout


def test_show_is_a_table_and_show_arch_lists_set_keys(trained):
    out = run_cli("show", "mlp-digits").stdout
    assert "{'" not in out and "field" in out and "hidden: [64]" in out
    arch = run_cli("show-arch", "rnn").stdout
    assert "model.cell" in arch and "lstm" in arch and "train.epochs" in arch
    keys = run_cli("show-arch", "mlp", "--json").json()
    assert "hidden" in keys["model"] and "lr" in keys["train"]
    assert "unknown model 'nope'" in run_cli("show-arch", "nope", expect=2).stderr


def test_models_on_a_missing_folder_says_so(tmp_path):
    out = run_cli("models", "--repo", str(tmp_path / "typo")).stdout
    assert "no such folder" in out and "typo" in out
