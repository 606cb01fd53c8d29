"""``dlkit quantize --method auto`` on the digits MLP, CNN, LSTM and GRU, against the issue's targets.

For each architecture: train its recipe (models/*.toml; the GRU is rnn.toml with cell=gru),
export it to ONNX, and run ``quantize --method auto`` on the CPU provider. The chosen model is
then measured again, apart from the selection, beside its float32 parent (auto picks the
fastest of noisy timings, which flatters the winner; a fresh measurement does not): test
accuracy, size on disk, latency at batch 1 and 64 with both sessions taking turns. Targets:

- size on disk <= 0.3x the float32 model;
- test-accuracy drop <= 0.5 points;
- latency at batch 64 never slower than float32 onnxruntime, and >= 1.3x faster for mlp and rnn.

    python benchmarks/bench_quantize.py                       # 20 epochs each, temporary repository
    python benchmarks/bench_quantize.py --repo /tmp/q --epochs 40 --archs mlp,lstm --json out.json
    python benchmarks/bench_quantize.py --threads 1      # steadier timings on a busy machine

Models already in ``--repo`` (same name) are reused, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {  # name in the table -> (recipe, model name, --set overrides)
    "mlp": ("mlp.toml", "mlp-digits", {}),
    "cnn": ("cnn.toml", "cnn-digits", {}),
    "lstm": ("rnn.toml", "rnn-digits", {}),
    "gru": ("rnn.toml", "gru-digits", {"cell": "gru"}),
}
SPEEDUP_TARGET = {"mlp": 1.3, "lstm": 1.3, "gru": 1.3, "cnn": 1.0}
SIZE_TARGET, DROP_TARGET = 0.3, 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (the recipes say 30-40)")
    parser.add_argument("--repo", help="model repository to keep the models in (default: temporary)")
    parser.add_argument("--measure-seconds", type=float, default=2.0, help="auto's timing per batch size")
    parser.add_argument("--seconds", type=float, default=5.0, help="the re-measurement's timing per batch size")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: its own choice)")
    parser.add_argument("--tolerance", type=float, help="auto's tolerance in accuracy points (default: its own, 0.5)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    from dlkit.errors import DlkitError
    from dlkit.store.recipe import read_recipe
    from dlkit.store.repository import ModelRepository
    from dlkit.training.run import train
    from dlkit_quantize.quantize import NoCandidateError, quantize

    tmp = None if args.repo else tempfile.TemporaryDirectory(prefix="bench-quantize-")
    repo = ModelRepository(args.repo or Path(tmp.name) / "models")
    results = []
    for arch in args.archs.split(","):
        recipe_file, name, overrides = ARCHS[arch]
        if not repo.versions(name):
            recipe = read_recipe(ROOT / "models" / recipe_file)
            recipe.name = name
            recipe.model.update(overrides)
            recipe.train["epochs"] = args.epochs
            started = time.perf_counter()
            train(recipe, repo, quiet=True)
            print(f"{arch}: trained {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        parent = repo.resolve(name)
        if not parent.has_onnx():
            from dlkit.export.onnx import export_onnx

            export_onnx(parent)
        for old in repo.versions(f"{name}-int8"):  # a fresh quantization each run
            shutil.rmtree(repo.root / f"{name}-int8" / str(old))
        started = time.perf_counter()
        try:
            report = quantize(parent, repo, method="auto", provider="cpu", measure_seconds=args.measure_seconds,
                              threads=args.threads, tolerance=args.tolerance, log=lambda msg: None)
        except NoCandidateError as exc:
            print_table(arch, exc.report)
            results.append({"arch": arch, "chosen": None, "error": str(exc), "auto": exc.report})
            continue
        except DlkitError as exc:
            results.append({"arch": arch, "chosen": None, "error": str(exc)})
            continue
        seconds = time.perf_counter() - started
        print_table(arch, report)
        child = repo.resolve(f"{report['model']}:{report['version']}")
        results.append({"arch": arch, "chosen": report["chosen"], "quantize_seconds": round(seconds, 1),
                        **remeasure(parent, child, args.seconds, args.threads), "auto": report})
    print_summary(results, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


def remeasure(parent, child, seconds: float, threads: int | None) -> dict:
    """Test accuracy, size and latency of the parent and the chosen model, measured afresh."""
    from dlkit.infer.evaluate import evaluate, evaluation_data
    from dlkit.infer.session import Session
    from dlkit_quantize.measure import AccuracyCheck, size_on_disk, time_sessions

    acc = {k: evaluate(v, runtime="onnx", provider="cpu")["accuracy"] for k, v in (("float32", parent), ("int8", child))}
    sessions = {"float32": Session(parent.onnx_path, "cpu", threads=threads),
                "int8": Session(child.onnx_path, "cpu", threads=threads)}
    check = AccuracyCheck(parent, evaluation_data(parent), sessions["float32"])
    lat = time_sessions(sessions, {b: check.latency_feeds(b) for b in (1, 64)}, seconds)
    return {
        "test_accuracy_float32": acc["float32"], "test_accuracy_int8": acc["int8"],
        "drop_points": (acc["float32"] - acc["int8"]) * 100,
        "size_float32": size_on_disk(parent.onnx_path), "size_int8": size_on_disk(child.onnx_path),
        "size_ratio": size_on_disk(child.onnx_path) / size_on_disk(parent.onnx_path),
        "b1_ms_float32": lat["float32"][1], "b1_ms_int8": lat["int8"][1],
        "b64_ms_float32": lat["float32"][64], "b64_ms_int8": lat["int8"][64],
        "speedup_b1": lat["float32"][1] / lat["int8"][1], "speedup_b64": lat["float32"][64] / lat["int8"][64],
    }


def print_table(arch: str, report: dict) -> None:
    from rich.console import Console

    from dlkit_quantize.cli import report_table

    Console(width=140, stderr=True).print(report_table(report))


def print_summary(results: list[dict], threads: int | None) -> None:
    import onnxruntime

    print(f"\ndlkit quantize --method auto, onnxruntime {onnxruntime.__version__} CPUExecutionProvider, "
          f"{os.cpu_count()} CPU cores, {threads or 'default'} intra-op threads; the chosen model re-measured "
          f"beside float32 (fastest of interleaved single calls)\n")
    head = (f"| arch | chosen | test acc fp32 | test acc int8 | drop (pts) | size ratio | b64 ms fp32 | b64 ms int8 "
            f"| speedup b64 | speedup b1 | targets |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        if r["chosen"] is None:
            print(f"| {r['arch']} | none: {r['error']} |" + " |" * 9)
            continue
        target = SPEEDUP_TARGET[r["arch"]]
        met = {
            f"size<={SIZE_TARGET}": r["size_ratio"] <= SIZE_TARGET,
            f"drop<={DROP_TARGET}": r["drop_points"] <= DROP_TARGET,
            f"b64>={target}x": r["speedup_b64"] >= target,
        }
        verdict = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items())
        print(f"| {r['arch']} | {r['chosen']} | {r['test_accuracy_float32']:.4f} | {r['test_accuracy_int8']:.4f} "
              f"| {r['drop_points']:+.2f} | {r['size_ratio']:.2f} | {r['b64_ms_float32']:.3f} | {r['b64_ms_int8']:.3f} "
              f"| {r['speedup_b64']:.2f}x | {r['speedup_b1']:.2f}x | {verdict} |")


if __name__ == "__main__":
    main()
