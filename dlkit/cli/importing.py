"""``dlkit import onnx`` and ``dlkit import torch``: models dlkit did not train, into the repository."""

from __future__ import annotations

import click

from dlkit.cli.group import cli
from dlkit.cli.options import json_option, open_repo, repo_option

labels_option = click.option("--labels", help="Class names: a,b,c, or a file (one per line, or a JSON array).")
task_option = click.option("--task", help="A registered task (default: classification with --labels, else none: raw outputs).")


@cli.group("import")
def import_group():
    """Bring in a model trained elsewhere: an ONNX file or a PyTorch module."""


@import_group.command("onnx")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Name of the model in the repository (a new version if it exists).")
@labels_option
@task_option
@repo_option
@json_option
def import_onnx_cmd(file, name, labels, task, repo, as_json):
    """Store FILE (an ONNX graph) as the next version of NAME, with meta.json and config.pbtxt."""
    from dlkit.infer.importer import import_onnx

    report = import_onnx(open_repo(repo), file, name, labels, task)
    _emit(report, as_json)


@import_group.command("torch")
@click.argument("factory", metavar="MODULE:FACTORY")
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The module's state dict as a .safetensors file (never a pickle).")
@click.option("--example-input", "example", required=True,
              help="One input's shape with the batch axis, e.g. 1,4 or 1,3,32,32; several inputs: "
                   "NAME=1,4;NAME2=1,8; a dtype suffix: 1,10:int64.")
@click.option("--name", help="Name of the model (default: the factory's name).")
@labels_option
@task_option
@repo_option
@json_option
def import_torch_cmd(factory, weights, example, name, labels, task, repo, as_json):
    """Build MODULE:FACTORY() from your own code, load --weights strictly, store it as a model version."""
    from dlkit.export.import_torch import import_torch

    report = import_torch(open_repo(repo), factory, weights, example, name, labels, task)
    _emit(report, as_json)


def _emit(report: dict, as_json: bool) -> None:
    from dlkit.cli.output import emit

    def human(r):
        click.echo(f"imported {r['model']}:{r['version']} -> {r['path']} (task {r['task'] or 'none'}"
                   + (f", {len(r['labels'])} labels" if r.get("labels") else "") + ")")
        for side in ("inputs", "outputs"):
            for t in r.get(side) or []:
                shape = ", ".join("?" if d is None else str(d) for d in t["shape"])
                click.echo(f"  {side[:-1]:6} {t['name']}: {t['dtype']} ({shape})")
        if r.get("config"):
            click.echo(f"  Triton config: {r['config']}")
        for step in r.get("next") or []:
            click.echo(f"  next: {step}")

    emit(report, as_json, human)
