"""The ``dlkit`` command line: thin commands that parse, call the Python API, and print.

Output is for people by default; ``--json`` prints exactly one JSON object on stdout, with
progress and logs on stderr. Exit codes: 0 done, 2 bad usage or input, 1 a failure during
the work. ``--debug`` (anywhere on the line) shows tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import click

from . import __version__
from .errors import DlkitError

DEBUG = False

repo_option = click.option(
    "--repo", type=click.Path(file_okay=False), envvar="DLKIT_REPO", default="models", show_default=True,
    help="Model repository folder (or $DLKIT_REPO).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


def open_repo(repo: str):
    from .repository import ModelRepository

    return ModelRepository(repo)


def emit(obj: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``obj`` as JSON, or through ``human`` for people."""
    if as_json or human is None:
        click.echo(json.dumps(obj, indent=None if as_json else 2, default=str))
    else:
        human(obj)


def console():
    from rich.console import Console

    return Console()


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def fmt_metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


class DlkitGroup(click.Group):
    """Adds plugin commands on first look-up, and turns dlkit's errors into one red line and an
    exit code (tracebacks only with --debug)."""

    _plugins_added = False

    def _add_plugin_commands(self, ctx) -> None:
        if DlkitGroup._plugins_added:
            return
        DlkitGroup._plugins_added = True
        from .plugins import get_plugins

        try:
            get_plugins().add_commands(self)
        except DlkitError as exc:  # DLKIT_STRICT_PLUGINS=1
            if DEBUG:
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)

    def list_commands(self, ctx):
        self._add_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._add_plugin_commands(ctx)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DlkitError as exc:
            if DEBUG:
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if DEBUG:
                raise
            click.secho("interrupted", fg="red", err=True)
            ctx.exit(130)


@click.group(cls=DlkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlkit")
def cli():
    """dlkit: train, compress, export and serve neural networks.

    Models live in a repository (./models by default): NAME is the latest version of a model,
    NAME:V a fixed one. Add --json to any command for machine-readable output.
    """


# -- plugins and the repository ----------------------------------------------------------------
@cli.command("plugins")
@json_option
def plugins_cmd(as_json):
    """List installed plugins, their versions and what each registered."""
    from .plugins import get_plugins

    infos = [i.as_dict() for i in get_plugins().infos.values()]

    def human(_):
        rows = []
        for i in infos:
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in i["registered"].items())
            if i["error"]:
                what = f"[red]{i['error']}[/red]"
            hooks = ", ".join(h.removeprefix("register_") for h in i["hooks"])
            rows.append([i["name"], i["distribution"] or "", i["version"] or "",
                         "built-in" if i["builtin"] else "third-party", hooks, what])
        console().print(table("Plugins", ["plugin", "distribution", "version", "kind", "hooks", "registers"], rows))

    emit({"plugins": infos}, as_json, human)


@cli.command("models")
@repo_option
@json_option
def models_cmd(repo, as_json):
    """List the models in the repository with their versions and key metrics."""
    r = open_repo(repo)
    items = []
    for v in r.all_versions():
        meta = v.meta
        items.append({"name": v.name, "version": v.version, "arch": meta.get("arch"), "method": meta.get("method"),
                      "params": meta.get("params"), "metrics": meta.get("metrics", {}),
                      "onnx": v.has_onnx(), "created": meta.get("created")})

    def human(_):
        if not items:
            click.echo(f"no models in {r.root} yet: try `dlkit train cnn`")
            return
        rows = [[i["name"], i["version"], i["arch"], i["method"] or "", i["params"],
                 fmt_metric(i["metrics"].get("test_accuracy")), "yes" if i["onnx"] else "", i["created"]]
                for i in items]
        console().print(table(f"Models in {r.root}", ["name", "version", "arch", "method", "params",
                                                      "test acc", "onnx", "created"], rows))

    emit({"repository": str(r.root), "models": items}, as_json, human)


@cli.command("show")
@click.argument("ref")
@repo_option
@json_option
def show_cmd(ref, repo, as_json):
    """Show one version's meta.json (NAME or NAME:V)."""
    v = open_repo(repo).resolve(ref)
    meta = {**v.meta, "path": str(v.path), "files": sorted(p.name for p in v.path.iterdir())}

    def human(m):
        from rich.pretty import Pretty

        console().print(Pretty(m, expand_all=False))

    emit(meta, as_json, human)


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
    from .distributed import env_world_size, launch

    if nproc > 1 and env_world_size() == 1:
        args = [a for a in sys.argv[1:] if a != "--debug"]
        args = _without_option(args, "--nproc")
        ctx.exit(launch(nproc, args + ["--repo", repo]))
    from .plugins import get_registry
    from .recipe import Recipe, apply_sets, read_recipe
    from .training import train

    recipe = read_recipe(target) if target.endswith(".toml") else Recipe(arch=target)
    registry = get_registry()
    spec = registry.model(recipe.arch)
    trainer = registry.trainer(spec.trainer)
    apply_sets(recipe, list(sets), set(spec.defaults), set(trainer.defaults))
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device}
    recipe.train.update({k: v for k, v in flags.items() if v is not None})
    if data:
        recipe.data["source"] = data
    if name:
        recipe.name = name
    if seed is not None:
        recipe.seed = seed
    result = train(recipe, open_repo(repo), resume=resume, quiet=False)
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
    from .evaluation import evaluate

    version = open_repo(repo).resolve(ref)
    runtime = runtime or ("torch" if version.has_weights() or not version.has_onnx() else "onnx")
    result = evaluate(version, runtime=runtime, data=data, split=split, provider=provider)

    def human(r):
        click.echo(f"{r['model']}:{r['version']} on {r['data']} ({r['split']}, {r['samples']} samples, "
                   f"{r['runtime']}): accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}")

    emit(result, as_json, human)


# -- export and inference: export onnx, predict, bench, providers ---------------------------------
provider_option = click.option(
    "--provider", default="auto", show_default=True,
    help="onnxruntime execution provider: auto (TensorRT, then CUDA, then CPU), cpu, cuda, tensorrt or any "
         "provider name; an unavailable one falls back to CPU with a warning.",
)
strict_provider_option = click.option(
    "--strict-provider", is_flag=True, help="Fail instead of falling back to CPU when the provider is unavailable.")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), help="Intra-op threads (default: the runtime's own choice).")
optimization_option = click.option(
    "--optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True,
    help="onnxruntime graph optimization level.")


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {text!r}",
                                 param_hint=option)
    return values


@cli.group("export")
def export_group():
    """Export a model for other runtimes."""


@export_group.command("onnx")
@click.argument("ref")
@click.option("--opset", type=int, help="ONNX opset (default: 17 from the tracer, 18 or newer from dynamo).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True,
              help="torch's exporter; auto tries the fast torchscript tracer, then dynamo if the tracer fails "
                   "or its graph fails the parity check.")
@repo_option
@json_option
def export_onnx_cmd(ref, opset, exporter, repo, as_json):
    """Write NAME[:V]'s model.onnx, checked against torch, and a Triton config.pbtxt."""
    from .export import export_onnx

    report = export_onnx(open_repo(repo).resolve(ref), opset=opset, exporter=exporter)

    def human(r):
        click.echo(f"exported {r['model']}:{r['version']} -> {r['path']} ({r['bytes'] / 1024:.0f} KiB, opset "
                   f"{r['opset']}, {r['exporter']} exporter)")
        click.echo(f"  parity with torch: max abs difference {r['max_abs_diff']:.2e} <= {r['tolerance']:g} over "
                   f"{len(r['parity']['cases'])} checks ({', '.join(c['case'] for c in r['parity']['cases'])})")
        click.echo(f"  Triton config: {r['config']}")

    emit(report, as_json, human)


@cli.command("predict")
@click.argument("ref")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@provider_option
@strict_provider_option
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Probabilities to show per input.")
@threads_option
@optimization_option
@repo_option
@json_option
def predict_cmd(ref, inputs, provider, strict_provider, top_k, threads, optimization, repo, as_json):
    """Classify INPUT files (.npy, .npz, .csv rows, PNG/JPEG images) with NAME[:V]'s model.onnx."""
    from .predict import predict

    result = predict(open_repo(repo).resolve(ref), list(inputs), provider, top_k, strict=strict_provider,
                     threads=threads, optimization=optimization)

    def human(r):
        rows = [[p["input"], p["label"], f"{p['probability']:.4f}",
                 "  ".join(f"{t['label']} {t['probability']:.3f}" for t in p["top_k"])] for p in r["predictions"]]
        console().print(table(f"{r['model']}:{r['version']} on {r['providers'][0]}",
                              ["input", "label", "probability", f"top {top_k}"], rows))

    emit(result, as_json, human)


@cli.command("bench")
@click.argument("ref")
@click.option("--batch-sizes", default="1,8,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--runtimes", help="Comma-separated: torch, onnx (default both, or onnx for a model with only model.onnx).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Timed seconds per runtime and batch size (after warm-up).")
@provider_option
@strict_provider_option
@threads_option
@optimization_option
@repo_option
@json_option
def bench_cmd(ref, batch_sizes, runtimes, seconds, provider, strict_provider, threads, optimization, repo, as_json):
    """Latency (p50/p90/p99) and throughput of torch and onnxruntime, side by side."""
    from .bench import bench

    sizes = _int_list("--batch-sizes", batch_sizes)
    version = open_repo(repo).resolve(ref)
    if runtimes is None:
        runtimes = "torch,onnx" if version.has_weights() or not version.has_onnx() else "onnx"
    names = [r.strip() for r in runtimes.split(",") if r.strip()]
    result = bench(version, sizes, names, seconds, provider, threads=threads,
                   optimization=optimization, strict=strict_provider)

    def human(r):
        speed = {s["batch_size"]: s["speedup"] for s in r["speedups"]}
        rows = [[x["batch_size"], x["runtime"], f"{x['p50_ms']:.3f}", f"{x['p90_ms']:.3f}", f"{x['p99_ms']:.3f}",
                 f"{x['throughput']:,.0f}", f"{speed[x['batch_size']]:.2f}x" if x["runtime"] == "onnx" and speed else ""]
                for x in r["results"]]
        title = (f"{r['model']}:{r['version']}, {r['threads']} threads"
                 + (f", onnxruntime on {r['providers'][0]}" if r["providers"] else ""))
        console().print(table(title, ["batch", "runtime", "p50 ms", "p90 ms", "p99 ms", "samples/s",
                                      "onnx speedup (torch p50 / onnx p50)"], rows))

    emit(result, as_json, human)


@cli.command("providers")
@json_option
def providers_cmd(as_json):
    """onnxruntime's execution providers on this machine, and what --provider auto picks."""
    from .runtime import providers_report

    report = providers_report()

    def human(r):
        names = {v: k for k, v in r["aliases"].items()}
        rows = [[p, names.get(p, ""), "yes" if p == r["auto"][0] else ""] for p in r["available"]]
        console().print(table(f"onnxruntime {r['onnxruntime']} ({r['device']})", ["provider", "--provider", "auto"], rows))

    emit(report, as_json, human)




# -- serving ---------------------------------------------------------------------------------------
@cli.command("serve")
@repo_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (warns off loopback without a token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free one; the address is printed on stderr).")
@click.option("--models", help="Comma-separated NAME or NAME:V to serve (default: every model with a model.onnx).")
@click.option("--provider", default="auto", show_default=True, help="onnxruntime provider: auto, cpu, cuda, tensorrt.")
@click.option("--max-batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Most rows per runtime call, and per request.")
@click.option("--max-queue-delay-ms", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Longest wait for batch-mates that are already arriving.")
@click.option("--max-queue-size", type=click.IntRange(1), default=1024, show_default=True,
              help="Requests queued per model version before answering 503.")
@click.option("--no-batching", is_flag=True, help="Run every request alone (no dynamic batching).")
@click.option("--token", envvar="DLKIT_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but health.")
@click.option("--max-request-bytes", type=click.IntRange(1), default=32 * 1024 * 1024, show_default=True,
              help="Largest request body (also after decompression); larger ones get 413.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="onnxruntime intra-op threads per model; raise it for large models on many cores.")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="One JSON line per request on stderr.")
@click.option("--max-inflight-bytes", type=click.IntRange(1), default=128 * 1024 * 1024, show_default=True,
              help="Bytes of all request bodies being received at once; beyond it, 503.")
@click.option("--max-connections", type=click.IntRange(1), default=1000, show_default=True,
              help="Open connections before new requests get 503.")
@click.option("--header-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds a connection may take to send its request headers.")
@click.option("--body-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds a request body may take to arrive (408 beyond).")
def serve_cmd(repo, host, port, models, provider, max_batch_size, max_queue_delay_ms, max_queue_size, no_batching,
              token, max_request_bytes, threads, access_log, **limits):
    """Serve the repository's ONNX models over the Open Inference Protocol (KServe v2) until Ctrl+C."""
    from .serve import ServeSettings, serve

    refs = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    r = open_repo(repo)
    serve(ServeSettings(repo=r.root, models=refs, host=host, port=port, token=token, log_access=access_log,
                        provider=provider, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                        max_queue_size=max_queue_size, max_request_bytes=max_request_bytes,
                        batching=not no_batching, threads=threads, **limits))



def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``--debug`` may stand anywhere on the line."""
    global DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args.remove("--debug")
        DEBUG = True
    DEBUG = DEBUG or os.environ.get("DLKIT_DEBUG", "") not in ("", "0")
    cli.main(args=args, prog_name="dlkit")


if __name__ == "__main__":
    main()
