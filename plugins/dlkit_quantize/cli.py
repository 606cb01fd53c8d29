"""``dlkit quantize``: parse, call :func:`dlkit_quantize.quantize.quantize`, print the table."""

from __future__ import annotations

import json

import click


def add_command(cli) -> None:
    from dlkit import emit
    from dlkit import json_option, open_repo, provider_option, repo_option, threads_option

    @cli.command("quantize")
    @click.argument("ref")
    # Free text checked by quantize() (one line naming the value, as for every bad option), with
    # the choices shown in help as click.Choice would.
    @click.option("--method", metavar="[auto|dynamic|static|fp16]", default="auto", show_default=True,
                  help="auto (build candidates, measure, keep the fastest within --tolerance), dynamic, static or fp16.")
    @click.option("--calibration-samples", type=int, default=256, show_default=True,
                  help="Training-split samples that calibrate static quantization.")
    @click.option("--calibrate", metavar="[minmax|entropy|percentile]", default="minmax",
                  show_default=True, help="Calibration of static quantization's activation ranges.")
    @click.option("--per-channel/--no-per-channel", default=None,
                  help="One scale per output channel of each weight, or one per tensor (default: per channel "
                       "for static, per tensor for dynamic; auto tries both for dynamic).")
    @click.option("--format", "fmt", metavar="[qdq|qoperator]",
                  help="Static quantization form (default qdq; --method auto tries both).")
    @click.option("--tolerance", type=float,
                  help="Quality loss allowed: validation accuracy points (default 0.5); for generators, percent "
                       "increase of the Frechet distance (default 10).")
    @click.option("--name", help="Name of the new model (default NAME-int8, or NAME-fp16).")
    @provider_option
    @click.option("--op-types", help="Quantize only these op types, comma-separated (e.g. MatMul,LSTM).")
    @click.option("--measure-seconds", type=float, default=2.0, show_default=True,
                  help="Seconds of timing per batch size (more: steadier latencies).")
    @threads_option
    @click.option("--calibration-data", type=click.Path(dir_okay=False),
                  help="An .npz with one array per graph input that calibrates static quantization "
                       "(for models without a recorded data set, e.g. imported graphs).")
    @click.option("--data", type=click.Path(),
                  help="What quality is measured on: labelled data (an .npz with y, or any file dlkit trains on) "
                       "for the task's check, or an .npz of inputs only for agreement with the float model.")
    @repo_option
    @json_option
    def quantize_cmd(ref, method, calibration_samples, calibrate, per_channel, fmt, tolerance, name, provider,
                     op_types, measure_seconds, threads, calibration_data, data, repo, as_json):
        """Quantize NAME[:V]'s model.onnx (int8 or float16) into a new model, measured here."""
        from .quantize import NoCandidateError, quantize

        from dlkit import use_threads

        threads = use_threads(threads)
        r = open_repo(repo)
        version = r.resolve(ref)
        options = {"method": method, "calibration_samples": calibration_samples, "calibrate": calibrate,
                   "per_channel": per_channel, "format": fmt, "tolerance": tolerance, "name": name,
                   "provider": provider, "measure_seconds": measure_seconds, "threads": threads,
                   "op_types": op_types.split(",") if op_types is not None else None,
                   "calibration_data": calibration_data, "data": data}
        try:
            report = quantize(version, r, **options)
        except NoCandidateError as exc:
            if as_json:
                click.echo(json.dumps({**exc.report, "error": str(exc)}, default=str))
            else:
                console().print(report_table(exc.report))
            raise

        def human(rep):
            console().print(report_table(rep))
            row = next(x for x in rep["table"] if x["chosen"])
            click.echo(f"quantized {rep['parent']['name']}:{rep['parent']['version']} -> {rep['model']}:{rep['version']} "
                       f"({row['candidate']}): size {row['size_ratio']:.2f}x, latency at batch 64 "
                       f"{row['latency_b64_ratio']:.2f}x, {_quality(rep, row)}")

        emit(report, as_json, human)


def console():
    """A rich console at least 120 columns wide: the table is wider than a pipe's default 80."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 120))


def _quality(rep: dict, row: dict) -> str:
    header, key, fmt = rep["quality_columns"][-1]
    return f"{header} {row[key]:{fmt}} (drop {row['drop']:+.2f} {rep['drop_unit']})"


def report_table(rep: dict):
    """The measured table for people: one row per model, with ratios to the parent (x); "out diff"
    is the mean absolute difference of its outputs from the parent's."""
    from rich import box
    from rich.table import Table

    columns = rep["quality_columns"]  # (header, row key, format) from the task's quality check
    title = (f"Quantization of {rep['parent']['name']}:{rep['parent']['version']} on {rep['providers'][0]} "
             f"(tolerance {rep['tolerance']:g} {rep['drop_unit']})")
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    quality_cols = [header for header, _, _ in columns] + ["drop"]
    for col in ["candidate", *quality_cols, "out diff", "KiB", "x", "ms b1", "x", "ms b64", "x", ""]:
        t.add_column(col, justify="left" if col in ("candidate", "") else "right", no_wrap=col != "")
    for r in rep["table"]:
        if r.get("error"):
            t.add_row(r["candidate"], *[""] * (len(quality_cols) + 7), f"failed: {r['error']}")
            continue
        quality = [f"{r[key]:{fmt}}" for _, key, fmt in columns] + [f"{r['drop']:+.2f}"]
        status = "parent" if r["candidate"] == "float32" else "chosen" if r["chosen"] else \
            "ok" if r["passed"] else "over tolerance"
        t.add_row(r["candidate"], *quality, f"{r['output_difference']:.1e}", f"{r['size_bytes'] / 1024:.0f}",
                  f"{r['size_ratio']:.2f}",
                  f"{r['latency_b1_ms']:.3f}", f"{r['latency_b1_ratio']:.2f}",
                  f"{r['latency_b64_ms']:.3f}", f"{r['latency_b64_ratio']:.2f}", status)
    return t
