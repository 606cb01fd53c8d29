"""``dlkit export onnx``, ``predict``, ``bench`` and ``providers``."""

from __future__ import annotations

import click

from dlkit.cli.group import cli
from dlkit.cli.options import (
    _int_list,
    json_option,
    open_repo,
    optimization_option,
    provider_option,
    repo_option,
    strict_provider_option,
    threads_option,
)
from dlkit.cli.output import console, emit, table


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
    from dlkit.export.onnx import export_onnx

    report = export_onnx(open_repo(repo).resolve(ref), opset=opset, exporter=exporter)

    def human(r):
        click.echo(f"exported {r['model']}:{r['version']} -> {r['path']} ({r['bytes'] / 1024:.0f} KiB, opset "
                   f"{r['opset']}, {r['exporter']} exporter)")
        # The tolerance applies to the difference relative to the outputs' magnitude where it is above 1.
        click.echo(f"  parity with torch: max difference {r['max_rel_diff']:.2e} <= {r['tolerance']:g} "
                   f"(absolute {r['max_abs_diff']:.2e}) over {len(r['parity']['cases'])} checks "
                   f"({', '.join(c['case'] for c in r['parity']['cases'])})")
        click.echo(f"  Triton config: {r['config']}")

    emit(report, as_json, human)


@cli.command("predict")
@click.argument("ref")
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("--input", "named", multiple=True, metavar="NAME=FILE",
              help="A .npy file for the graph input NAME; repeat for each input of a graph with several "
                   "(together they are one input set).")
@provider_option
@strict_provider_option
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Probabilities to show per input.")
@click.option("--invert", is_flag=True,
              help="Read images as their negative: a dark drawing on white paper for a model trained on light "
                   "strokes on black (the digits data).")
@threads_option
@optimization_option
@repo_option
@json_option
def predict_cmd(ref, inputs, named, provider, strict_provider, top_k, invert, threads, optimization, repo, as_json):
    """Predict INPUT files (.npy, .npz with one array per graph input, .csv rows, PNG/JPEG images) with
    NAME[:V]'s model.onnx."""
    from dlkit.infer.feeds import parse_named_inputs
    from dlkit.infer.predict import predict

    sources = list(inputs) + ([parse_named_inputs(named)] if named else [])
    result = predict(open_repo(repo).resolve(ref), sources, provider, top_k, strict=strict_provider,
                     threads=threads, optimization=optimization, invert=invert)
    for p in result.get("predictions", []):  # on stderr, also under --json: a confident answer may be wrong
        if p["warning"]:
            click.secho(f"warning: {p['input']}: {p['warning']}; the model expects {result['expects']}",
                        fg="yellow", err=True)

    def human(r):
        if "outputs" in r:  # a graph that is not a classifier: its outputs, summarised
            rows = [[o["input"], name, "x".join(map(str, o["shapes"][name])), _preview(values)]
                    for o in r["outputs"] for name, values in o["outputs"].items()]
            console().print(table(f"{r['model']}:{r['version']} on {r['providers'][0]}",
                                  ["input", "output", "shape", "values"], rows))
            return
        click.echo(f"expects: {r['expects']}")
        if r["predictions"] and "label" not in r["predictions"][0]:  # a task that prints no labels
            return _print_fields(r)
        rows = [[p["input"], p["label"], f"{p['probability']:.4f}",
                 "  ".join(f"{t['label']} {t['probability']:.3f}" for t in p["top_k"])] for p in r["predictions"]]
        console().print(table(f"{r['model']}:{r['version']} on {r['providers'][0]}",
                              ["input", "label", "probability", f"top {top_k}"], rows))

    emit(result, as_json, human)


def _preview(values, n: int = 6) -> str:
    import numpy as np

    flat = np.asarray(values).ravel()
    text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat[:n].tolist())
    return text + (", ..." if flat.size > n else "")


def _print_fields(r: dict) -> None:
    """Predictions as a table of their scalar fields (a regressor's values, a cluster and its distance)."""
    first = r["predictions"][0]
    keys = [k for k, v in first.items() if k not in ("input", "warning") and isinstance(v, (int, float, str))]
    rows = [[p["input"], *(f"{p[k]:.4f}" if isinstance(p[k], float) else str(p[k]) for k in keys)]
            for p in r["predictions"]]
    console().print(table(f"{r['model']}:{r['version']} on {r['providers'][0]}", ["input", *keys], rows))


@cli.command("bench")
@click.argument("ref")
@click.option("--batch-sizes", default="1,8,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--runtimes",
              help="Comma-separated: torch, onnx (default both, or onnx for a model with only model.onnx).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Timed seconds per runtime and batch size (after warm-up).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS",
              help="Size of a graph input the graph leaves open, e.g. audio=Bx16000 (B: each batch size); "
                   "repeatable. onnxruntime only.")
@provider_option
@strict_provider_option
@threads_option
@optimization_option
@repo_option
@json_option
def bench_cmd(ref, batch_sizes, runtimes, seconds, shapes, provider, strict_provider, threads, optimization, repo,
              as_json):
    """Latency (p50/p90/p99) and throughput of torch and onnxruntime, side by side."""
    from dlkit.infer.bench import bench, parse_shapes

    sizes = _int_list("--batch-sizes", batch_sizes)
    version = open_repo(repo).resolve(ref)
    if runtimes is None:
        both = (version.has_weights() or not version.has_onnx()) and not shapes  # --shape sizes onnx inputs
        runtimes = "torch,onnx" if both else "onnx"
    names = [r.strip() for r in runtimes.split(",") if r.strip()]
    result = bench(version, sizes, names, seconds, provider, threads=threads,
                   optimization=optimization, strict=strict_provider, shapes=parse_shapes(shapes))

    def human(r):
        speed = {s["batch_size"]: s["speedup"] for s in r["speedups"]}
        rows = [[x["batch_size"], x["runtime"], f"{x['p50_ms']:.3f}", f"{x['p90_ms']:.3f}", f"{x['p99_ms']:.3f}",
                 f"{x['throughput']:,.0f}",
                 f"{speed[x['batch_size']]:.2f}x" if x["runtime"] == "onnx" and speed else ""]
                for x in r["results"]]
        threads = ", ".join(f"{k} {v}" for k, v in r["thread_counts"].items())
        title = (f"{r['model']}:{r['version']}, threads: {threads}"
                 + (f", onnxruntime on {r['providers'][0]}" if r["providers"] else ""))
        console().print(table(title, ["batch", "runtime", "p50 ms", "p90 ms", "p99 ms", "samples/s",
                                      "onnx speedup (torch p50 / onnx p50)"], rows))
        if r["speedup_note"]:
            click.secho(r["speedup_note"], fg="yellow", err=True)

    emit(result, as_json, human)


@cli.command("providers")
@json_option
def providers_cmd(as_json):
    """onnxruntime's execution providers on this machine, and what --provider auto picks."""
    from dlkit.infer.session import providers_report

    report = providers_report()

    def human(r):
        names = {v: k for k, v in r["aliases"].items()}
        rows = [[p, names.get(p, ""), "yes" if p == r["auto"][0] else ""] for p in r["available"]]
        console().print(table(f"onnxruntime {r['onnxruntime']} ({r['device']})",
                              ["provider", "--provider", "auto"], rows))

    emit(report, as_json, human)




