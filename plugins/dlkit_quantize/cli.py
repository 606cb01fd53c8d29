"""``dlkit quantize``: parse, call :func:`dlkit_quantize.quantize.quantize`, print the table."""

from __future__ import annotations

import json

import click


def add_command(cli) -> None:
    from dlkit import emit, json_option, open_repo, provider_option, repo_option, threads_option

    @cli.command("quantize")
    @click.argument("ref")
    # Free text checked by quantize() (one line naming the value, as for every bad option), with
    # the choices shown in help as click.Choice would.
    @click.option("--method", metavar="[auto|dynamic|static|weight-only|fp16|qat]", default="auto",
                  show_default=True,
                  help="auto (build candidates, measure, keep the fastest within --tolerance), dynamic, static, "
                       "weight-only (int4 MatMulNBits), fp16 or qat (fine-tune with fake quantization, then QDQ).")
    @click.option("--optimize-for", metavar="[served|latency|throughput|size]", default="served", show_default=True,
                  help="What auto minimises: served (every --batch-sizes), latency (the smallest batch), "
                       "throughput (the largest) or size.")
    @click.option("--batch-sizes", help="Batch sizes to time, e.g. 1,64 (default: 1 and config.pbtxt's "
                                        "max_batch_size, else 1,64).")
    @click.option("--report", "show_report", is_flag=True,
                  help="Also measure and print the per-layer sensitivity table (each layer quantized alone).")
    @click.option("--qat-epochs", type=int, default=3, show_default=True,
                  help="Epochs of quantization-aware fine-tuning (--method qat, or auto when no post-training "
                       "candidate is within --tolerance).")
    @click.option("--fallback/--no-fallback", default=True, show_default=True,
                  help="When a candidate misses --tolerance, keep its most sensitive layers float until it passes.")
    @click.option("--fallback-precision", metavar="[float32|float16]",
                  help="What the layers the fallback keeps out of int8 compute in (default: float16 on a GPU "
                       "provider, float32 on CPU, where float16 is not faster).")
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
                     op_types, measure_seconds, threads, calibration_data, data, optimize_for, batch_sizes,
                     show_report, qat_epochs, fallback, fallback_precision, repo, as_json):
        """Quantize NAME[:V]'s model.onnx (int8 or float16) into a new model, measured here."""
        from dlkit import use_threads

        from .quantize import NoCandidateError, quantize

        threads = use_threads(threads)
        r = open_repo(repo)
        version = r.resolve(ref)
        options = {"method": method, "calibration_samples": calibration_samples, "calibrate": calibrate,
                   "per_channel": per_channel, "format": fmt, "tolerance": tolerance, "name": name,
                   "provider": provider, "measure_seconds": measure_seconds, "threads": threads,
                   "op_types": op_types.split(",") if op_types is not None else None,
                   "optimize_for": optimize_for, "batch_sizes": _batch_sizes(batch_sizes), "report": show_report,
                   "fallback": fallback, "fallback_precision": fallback_precision, "qat_epochs": qat_epochs,
                   "calibration_data": calibration_data, "data": data}
        try:
            report = quantize(version, r, **options)
        except NoCandidateError as exc:
            if as_json:
                click.echo(json.dumps({**exc.report, "error": str(exc)}, default=str))
            else:
                console().print(report_table(exc.report))
                if exc.report.get("sensitivity"):
                    console().print(sensitivity_table(exc.report))
            raise

        def human(rep):
            console().print(report_table(rep))
            if rep.get("sensitivity") and show_report:
                console().print(sensitivity_table(rep))
            if rep.get("kept_float"):
                click.echo(f"kept {rep['kept_precision']}: {', '.join(rep['kept_float'])}")
            row = next(x for x in rep["table"] if x["chosen"])
            largest = max(rep["batch_sizes"])
            parent = f"{rep['parent']['name']}:{rep['parent']['version']}"
            click.echo(f"quantized {parent} -> {rep['model']}:{rep['version']} "
                       f"({row['candidate']}): size {row['size_ratio']:.2f}x, latency at batch {largest} "
                       f"{row[f'latency_b{largest}_ratio']:.2f}x, {_quality(rep, row)}")

        emit(report, as_json, human)


def _batch_sizes(text: str | None) -> list | None:
    if text is None:
        return None
    from dlkit import InputError

    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise InputError(f"--batch-sizes {text}: expected integers separated by commas, e.g. 1,64") from None


def sensitivity_table(rep: dict):
    """Per-layer sensitivity: each quantizable node quantized alone, its output error against float."""
    from rich import box
    from rich.table import Table

    t = Table(title="Per-layer sensitivity (each node quantized alone, on calibration data; most sensitive first)",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("node", "op", "output error %", "argmax changed", "SQNR dB (whole QDQ graph)", ""):
        t.add_column(col, justify="left" if col in ("node", "op", "") else "right")
    kept = set(rep.get("kept_float") or [])
    for r in rep["sensitivity"]:
        if r["error"]:
            t.add_row(r["node"], r["op_type"], "", "", "", f"failed: {r['error']}")
            continue
        changed = "" if r["argmax_changed"] is None else f"{r['argmax_changed']:.1%}"
        sqnr = "" if r.get("sqnr_db") is None else f"{r['sqnr_db']:.1f}"
        t.add_row(r["node"], r["op_type"], f"{r['error_percent']:.3f}", changed, sqnr,
                  "kept float" if r["node"] in kept else "")
    return t


def console():
    """A rich console at least 190 columns wide: the table is wider than a pipe's default 80."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 190))


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
    batches = rep.get("batch_sizes", [1, 64])
    timing = [c for b in batches for c in (f"ms b{b}", "±%", "x")]
    for col in ["candidate", *quality_cols, "out diff", "KiB", "x", *timing, ""]:
        t.add_column(col, justify="left" if col in ("candidate", "") else "right", no_wrap=col != "")
    for r in rep["table"]:
        if r.get("error"):
            t.add_row(r["candidate"], *[""] * (len(quality_cols) + 3 + len(timing)), f"failed: {r['error']}")
            continue
        quality = [f"{r[key]:{fmt}}" for _, key, fmt in columns] + [f"{r['drop']:+.2f}"]
        status = "parent" if r["candidate"] == "float32" else "chosen" if r["chosen"] else \
            "tie (within noise)" if r.get("tie") else "ok" if r["passed"] else "over tolerance"
        times = [c for b in batches for c in (f"{r[f'latency_b{b}_ms']:.3f}", f"{r[f'latency_b{b}_spread'] * 100:.1f}",
                                                f"{r[f'latency_b{b}_ratio']:.2f}")]
        t.add_row(r["candidate"], *quality, f"{r['output_difference']:.1e}", f"{r['size_bytes'] / 1024:.0f}",
                  f"{r['size_ratio']:.2f}", *times, status)
    return t
