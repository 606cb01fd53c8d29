"""``dlkit train`` and ``dlkit evaluate``."""

from __future__ import annotations

import sys

import click
from dlkit.cli import group
from dlkit.cli.group import cli
from dlkit.cli.options import json_option, open_repo, provider_option, repo_option, threads_option
from dlkit.cli.output import emit, fmt_metric




# -- training and evaluation ----------------------------------------------------------------------
@cli.command("train")
@click.argument("target")
@click.option("--data", help="Data set name or a file/folder: .csv, .tsv, .npz, image folder.  [default: digits]")
@click.option("--name", help="Model name in the repository.  [default: ARCH-DATA]")
@click.option("--epochs", type=int, help="Training epochs (train.epochs).  [default: the recipe's, else the "
                                         "trainer's: see `dlkit show-arch ARCH`]")
@click.option("--batch-size", type=int, help="Samples per step (train.batch_size).  [default: as --epochs]")
@click.option("--lr", type=float, help="Learning rate (train.lr).  [default: as --epochs]")
@click.option("--seed", type=int, help="Seed of the weights' initialisation and of the batches.  [default: 0]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a model hyper-parameter (model.KEY), train option (train.KEY) or data option "
                   "(data.KEY, see docs/data.md); `dlkit show-arch ARCH` lists the keys.")
@click.option("--device", type=str, help="auto, cpu or cuda[:N].  [default: auto]")
@click.option("--resume", is_flag=True, help="Continue the interrupted run of this model name.")
@click.option("--restart", is_flag=True, help="Discard the interrupted run of this model name and start over.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (torchrun; gloo on CPU, NCCL on GPU).")
@threads_option
@repo_option
@json_option
@click.pass_context
def train_cmd(ctx, target, data, name, epochs, batch_size, lr, seed, sets, device, resume, restart, nproc, threads,
              repo, as_json):
    """Train ARCH (mlp, cnn, rnn...) or a RECIPE.toml; CLI flags override the recipe.

    For several machines, start `torchrun --nproc-per-node N ... -m dlkit train ...` on each.
    """
    from dlkit.training.distributed import env_world_size, launch

    if nproc > 1 and env_world_size() == 1:
        args = [a for a in sys.argv[1:] if a != "--debug"]
        args = _without_option(args, "--nproc")
        ctx.exit(launch(nproc, args + ["--repo", repo]))
    from dlkit.training.run import TrainingInterrupted, train

    try:
        result = train(target, open_repo(repo), sets=sets, data=data, name=name, seed=seed, epochs=epochs,
                       batch_size=batch_size, lr=lr, device=device, resume=resume, restart=restart, quiet=False,
                       threads=threads)
    except TrainingInterrupted as exc:
        if group.DEBUG:
            raise
        click.secho(f"interrupted: the last checkpoint is kept in {exc.path}", fg="red", err=True)
        click.echo(f"continue with: {resume_command(ctx)}", err=True)
        ctx.exit(130)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return

    def human(res):
        m = res["metrics"]
        # The test split's scores first (a classifier's accuracy, a regressor's rmse and r2...), then time.
        keys = [k for k in m if k.startswith("test_") and k != "test_mse" and isinstance(m[k], float)][:4]
        keys += [k for k in ("val_accuracy", "train_seconds") if k in m]
        shown = "  ".join(f"{k} {fmt_metric(m[k])}" for k in keys)
        target = f", {res['target']}" if res.get("target") else ""
        click.echo(f"trained {res['model']}:{res['version']} ({res['params']:,} parameters{target}) -> {res['path']}")
        if shown:
            click.echo(f"  {shown}")

    emit(result.as_dict(), as_json, human)


def resume_command(ctx) -> str:
    """The command line that continues this run: the same one, with --resume and without --restart."""
    import shlex

    args = group.ARGS if group.ARGS is not None else [ctx.info_name, *sys.argv[1:]]
    args = [a for a in args if a not in ("--restart", "--resume", "--debug")]
    return shlex.join(["dlkit", *args, "--resume"])


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
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]),
              help="Which split to score; all: every row. Default: test of the model's own data set, "
                   "all of a --data file (which may hold only some of the model's classes).")
@provider_option
@threads_option
@repo_option
@json_option
def evaluate_cmd(ref, runtime, data, split, provider, threads, repo, as_json):
    """A model's task metrics (a classifier's accuracy and loss, a regressor's rmse, mae and r2...) on a split."""
    from dlkit.infer.evaluate import evaluate

    version = open_repo(repo).resolve(ref)
    runtime = runtime or ("torch" if version.has_weights() or not version.has_onnx() else "onnx")
    result = evaluate(version, runtime=runtime, data=data, split=split, provider=provider, threads=threads)

    def human(r):
        scores = "  ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float))  # the task's metrics
        click.echo(f"{r['model']}:{r['version']} on {r['data']} ({r['split']}, {r['samples']} samples, "
                   f"{r['runtime']}): {scores}" + (f"  ({r['classes']} classes)" if "classes" in r else ""))

    emit(result, as_json, human)


