"""``dlkit train`` and ``dlkit evaluate``."""

from __future__ import annotations

import sys

import click
from dlkit.cli.group import cli
from dlkit.cli.options import json_option, open_repo, repo_option
from dlkit.cli.output import emit, fmt_metric




# -- training and evaluation ----------------------------------------------------------------------
@cli.command("train")
@click.argument("target")
@click.option("--data", help="Data set name (digits) or a file/folder: .csv, .npz, image folder.")
@click.option("--name", help="Model name in the repository (default ARCH-DATA).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a model hyper-parameter (model.KEY), train option (train.KEY) or data option (data.KEY).")
@click.option("--device", type=str, help="auto, cpu or cuda[:N].")
@click.option("--resume", is_flag=True, help="Continue the interrupted run of this model name.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (torchrun; gloo on CPU, NCCL on GPU).")
@repo_option
@json_option
@click.pass_context
def train_cmd(ctx, target, data, name, epochs, batch_size, lr, seed, sets, device, resume, nproc, repo, as_json):
    """Train ARCH (mlp, cnn, rnn...) or a RECIPE.toml; CLI flags override the recipe.

    For several machines, start `torchrun --nproc-per-node N ... -m dlkit train ...` on each.
    """
    from dlkit.training.distributed import env_world_size, launch

    if nproc > 1 and env_world_size() == 1:
        args = [a for a in sys.argv[1:] if a != "--debug"]
        args = _without_option(args, "--nproc")
        ctx.exit(launch(nproc, args + ["--repo", repo]))
    from dlkit.training.run import train

    result = train(target, open_repo(repo), sets=sets, data=data, name=name, seed=seed, epochs=epochs,
                   batch_size=batch_size, lr=lr, device=device, resume=resume, quiet=False)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return

    def human(res):
        m = res["metrics"]
        shown = "  ".join(f"{k} {fmt_metric(m[k])}" for k in ("test_accuracy", "val_accuracy", "test_loss",
                                                              "train_seconds") if k in m)
        click.echo(f"trained {res['model']}:{res['version']} ({res['params']:,} parameters) -> {res['path']}")
        if shown:
            click.echo(f"  {shown}")

    emit(result.as_dict(), as_json, human)


def _without_option(args: list[str], option: str) -> list[str]:
    """``args`` minus ``--option VALUE`` / ``--option=VALUE``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


@cli.command("evaluate")
@click.argument("ref")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]),
              help="Default: torch, or onnx for a model with only model.onnx (quantized models).")
@click.option("--data", help="Evaluate on another data set or file (default: the model's own).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--provider", default="auto", show_default=True, help="onnxruntime provider (--runtime onnx).")
@repo_option
@json_option
def evaluate_cmd(ref, runtime, data, split, provider, repo, as_json):
    """Accuracy and loss of a classifier on its data set's test split."""
    from dlkit.infer.evaluate import evaluate

    version = open_repo(repo).resolve(ref)
    runtime = runtime or ("torch" if version.has_weights() or not version.has_onnx() else "onnx")
    result = evaluate(version, runtime=runtime, data=data, split=split, provider=provider)

    def human(r):
        click.echo(f"{r['model']}:{r['version']} on {r['data']} ({r['split']}, {r['samples']} samples, "
                   f"{r['runtime']}): accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}")

    emit(result, as_json, human)


