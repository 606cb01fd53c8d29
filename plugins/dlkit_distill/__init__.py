"""dlkit-distill: knowledge distillation (Hinton, Vinyals and Dean, 2015).

Trains a small student classifier on a stored teacher's softened outputs and stores it as a
new model whose meta.json records the teacher, the temperature and weight, and a report
(accuracies, parameters, gap recovered against a from-scratch baseline).
"""

from dlkit import hookimpl


def fit(run):
    """The ``distill`` trainer (see :mod:`dlkit_distill.trainer`)."""
    from .trainer import fit as distill_fit

    return distill_fit(run)


def compress(source, options, repo):
    """The ``distill`` compressor (see :func:`dlkit_distill.distill.distill`)."""
    from .distill import compress as distill_compress

    return distill_compress(source, options, repo)


@hookimpl
def register_trainers(register):
    from .options import DEFAULTS

    register("distill", fit, defaults=DEFAULTS,
             description="supervised loop on alpha*T^2*KL(teacher/T || student/T) + (1-alpha)*CE")


@hookimpl
def register_compressors(register):
    register("distill", compress, description="train a small student on a teacher's soft targets")


@hookimpl
def register_commands(cli):
    import click

    from dlkit import json_option, repo_option, threads_option

    from .options import ALPHA, TEMPERATURE

    @cli.command("distill")
    @click.argument("teacher", metavar="TEACHER[:V]")
    @click.option("--student", required=True, help="Student architecture (mlp, cnn, rnn...).")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Student hyper-parameter (model.KEY) or training option (train.KEY).")
    @click.option("--temperature", type=float, help=f"Softening temperature T > 0.  [default: {TEMPERATURE:g}]")
    @click.option("--alpha", type=float, help=f"Weight of the soft targets, 0..1 (1 - alpha goes to the "
                                               f"labels).  [default: {ALPHA:g}]")
    @click.option("--epochs", type=int, help="Training epochs of the student.")
    @click.option("--baseline", is_flag=True, help="Also train the student from scratch (same seed, "
                                                   "options, data) and report the gap recovered.")
    @click.option("--name", help="Name of the student model (default TEACHER-distilled-ARCH).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the student's initialisation.")
    @click.option("--data", help="Train on another data set with the teacher's labels (default: the teacher's).")
    @threads_option
    @repo_option
    @json_option
    def distill_cmd(teacher, student, sets, temperature, alpha, epochs, baseline, name, seed, data, threads, repo,
                    as_json):
        """Train a small STUDENT on the soft targets of TEACHER (a classifier in the repository)."""
        from dlkit import emit, open_repo, use_threads

        use_threads(threads)  # before the student's trainer imports torch

        from .distill import distill

        result = distill(teacher, student, sets=list(sets), temperature=temperature, alpha=alpha, epochs=epochs,
                         baseline=baseline, name=name, seed=seed, data=data, repo=open_repo(repo), quiet=False)
        emit(result.as_dict(), as_json, print_report)


def print_report(result: dict) -> None:
    """The report as a table, for people."""
    import click

    from dlkit import console, table

    r = result["report"]
    click.echo(f"distilled {r['teacher']['model']} -> {result['model']}:{result['version']} -> {result['path']}")
    rows = [["teacher", r["teacher"]["model"], f"{r['teacher']['params'] or 0:,}",
             f"{r['teacher']['test_accuracy']:.4f}"],
            ["distilled", f"{result['model']}:{result['version']}", f"{r['student']['params']:,}",
             f"{r['student']['test_accuracy']:.4f}"]]
    if r["baseline"]:
        rows.append(["baseline (from scratch)", r["student"]["arch"], f"{r['baseline']['params']:,}",
                     f"{r['baseline']['test_accuracy']:.4f}"])
    console().print(table(None, ["", "model", "params", "test accuracy"], rows))
    if r["param_ratio"]:
        click.echo(f"  parameters, teacher / student: {r['param_ratio']:.1f}x")
    if r["baseline"]:
        recovered = r["gap_recovered"]
        click.echo(f"  gap recovered: {recovered:.0%}" if recovered is not None
                   else "  gap recovered: n/a (the baseline is not below the teacher)")
