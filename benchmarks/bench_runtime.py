"""onnxruntime fp32 against PyTorch eager, export parity, and `dlkit predict` against `import torch`.

For mlp, cnn, rnn (LSTM) and rnn (GRU), trained on digits from the default recipes in models/
(with fewer epochs: accuracy is not the point), all in one run:

- export parity: max abs difference between onnxruntime and torch (real and random inputs,
  batch 1 and 37), and export seconds, for both of torch's exporters;
- latency: `dlkit.bench` at batch 1 and 64, torch (inference_mode) and onnxruntime (CPU) side
  by side in this process with the same thread count, taking turns; speedup = torch p50 /
  onnx p50. Targets: >= 2x at batch 1 for every architecture, >= 1x at batch 64;
- `dlkit predict cnn-digits one.png` as a whole process against `python -c "import torch"`,
  alternating, median wall time of each.

    python benchmarks/bench_runtime.py                       # a temporary repository
    python benchmarks/bench_runtime.py --repo /tmp/bench/models --threads 1,2 --seconds 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (recipe file, overrides of its [model] table)
    "mlp-digits": ("mlp.toml", {}),
    "cnn-digits": ("cnn.toml", {}),
    "rnn-digits": ("rnn.toml", {"cell": "lstm"}),
    "gru-digits": ("rnn.toml", {"cell": "gru"}),
}
TARGETS = {1: 2.0, 64: 1.0}  # batch size -> minimum onnx speedup


def train_models(repo, epochs: int) -> None:
    from dlkit.store.recipe import read_recipe
    from dlkit.training.run import train

    for name, (recipe_file, overrides) in MODELS.items():
        if repo.versions(name):
            continue
        recipe = read_recipe(ROOT / "models" / recipe_file)
        recipe.name = name
        recipe.model.update(overrides)
        recipe.train.update(epochs=epochs, patience=0)
        started = time.perf_counter()
        result = train(recipe, repo, quiet=True)
        print(f"trained {name} ({result.params:,} parameters, {epochs} epochs, "
              f"{time.perf_counter() - started:.0f} s): test accuracy {result.metrics['test_accuracy']:.4f}",
              file=sys.stderr)


def export_all(repo) -> list[dict]:
    """Each exporter on each model (each check on the same inputs), then the default export kept."""
    from dlkit.export.onnx import export_onnx

    rows = []
    for name in MODELS:
        version = repo.resolve(name)
        for exporter in ("dynamo", "torchscript", "auto"):
            report = export_onnx(version, exporter=exporter)
            rows.append({"model": name, "requested": exporter, "exporter": report["exporter"],
                         "opset": report["opset"], "max_abs_diff": report["max_abs_diff"],
                         "checks": len(report["parity"]["cases"]), "seconds": report["seconds"]})
            print(f"exported {name} with {exporter}: {report['exporter']} in {report['seconds']:.1f} s, "
                  f"max abs diff {report['max_abs_diff']:.1e}", file=sys.stderr)
    return rows


def bench_all(repo, threads: list[int], seconds: float) -> list[dict]:
    from dlkit.infer.bench import bench

    rows = []
    for n in threads:
        for name in MODELS:
            report = bench(repo.resolve(name), [1, 64], ["torch", "onnx"], seconds, "cpu", threads=n)
            for s in report["speedups"]:
                by = {r["runtime"]: r for r in report["results"] if r["batch_size"] == s["batch_size"]}
                rows.append({"model": name, "threads": n, "batch_size": s["batch_size"],
                             "torch_p50_ms": by["torch"]["p50_ms"], "onnx_p50_ms": by["onnx"]["p50_ms"],
                             "torch_p99_ms": by["torch"]["p99_ms"], "onnx_p99_ms": by["onnx"]["p99_ms"],
                             "speedup": s["speedup"], "throughput_ratio": s["throughput_ratio"]})
            print(f"benched {name} with {n} thread(s)", file=sys.stderr)
    return rows


def predict_vs_import_torch(repo, runs: int) -> dict:
    """Median wall seconds of a whole `dlkit predict` process on one PNG and of `import torch`."""
    import os

    import numpy as np
    from PIL import Image

    from dlkit.data.load import load_dataset

    x, _ = load_dataset("digits").split("test")
    image = Path(tempfile.mkdtemp()) / "digit.png"
    Image.fromarray((x[0, 0] * 255).astype(np.uint8), "L").save(image)
    env = {**os.environ, "DLKIT_REPO": str(repo.root)}
    dlkit = str(Path(sys.executable).with_name("dlkit"))
    commands = {"dlkit predict (1 image)": [dlkit, "predict", "cnn-digits", str(image), "--json"],
                "python -c 'import torch'": [sys.executable, "-c", "import torch"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for cmd in commands.values():  # warm the page cache for both
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    for _ in range(runs):
        for key, cmd in commands.items():  # alternating, so load changes hit both alike
            started = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times[key].append(time.perf_counter() - started)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="model repository (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per runtime and batch size")
    # One thread by default: on a shared machine (this one ran at a load of 5-8 on 2 cores) a
    # multi-threaded torch waits for its OpenMP team at every operator, which measures the
    # scheduler rather than the runtime. On an idle machine, compare with --threads 1,2,4.
    parser.add_argument("--threads", default="1", help="thread counts to compare at (same for both runtimes)")
    parser.add_argument("--runs", type=int, default=7, help="runs of each process for the predict timing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from dlkit.store.repository import ModelRepository

    repo = ModelRepository(args.repo or Path(tempfile.mkdtemp()) / "models")
    train_models(repo, args.epochs)
    exports = export_all(repo)
    benches = bench_all(repo, [int(t) for t in args.threads.split(",")], args.seconds)
    startup = predict_vs_import_torch(repo, args.runs)
    if args.json:
        print(json.dumps({"exports": exports, "bench": benches, "startup": startup}))
        return

    import onnxruntime

    print(f"\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.seconds} s per runtime "
          f"and batch size, CPU\n")
    print("| model | exporter | opset | max abs diff (batch 1 and 37) | checks | export s |")
    print("|---|---|---|---|---|---|")
    for e in exports:
        if e["requested"] != "auto":
            print(f"| {e['model']} | {e['exporter']} | {e['opset']} | {e['max_abs_diff']:.1e} | {e['checks']} "
                  f"| {e['seconds']:.1f} |")
    kept = [f"{e['model']} {e['exporter']}" for e in exports if e["requested"] == "auto"]
    print(f"\nkept (--exporter auto): {', '.join(kept)}\n")
    print("| model | threads | batch | torch p50 ms | onnx p50 ms | torch p99 ms | onnx p99 ms | onnx speedup (p50) |")
    print("|---|---|---|---|---|---|---|---|")
    for b in benches:
        print(f"| {b['model']} | {b['threads']} | {b['batch_size']} | {b['torch_p50_ms']:.3f} | {b['onnx_p50_ms']:.3f} "
              f"| {b['torch_p99_ms']:.3f} | {b['onnx_p99_ms']:.3f} | {b['speedup']:.2f}x |")
    (pk, pv), (tk, tv) = startup.items()
    print(f"\n| process | median wall s |\n|---|---|\n| {pk} | {pv:.2f} |\n| {tk} | {tv:.2f} |")
    print(f"\n`dlkit predict` takes {pv / tv:.2f}x the time of `import torch`")
    print()
    for batch, target in TARGETS.items():
        worst = min(b["speedup"] for b in benches if b["batch_size"] == batch)
        print(f"target onnx >= {target:g}x torch at batch {batch}: {'met' if worst >= target else 'NOT met'} "
              f"(worst {worst:.2f}x)")
    parity = max(e["max_abs_diff"] for e in exports)
    print(f"target export parity <= 1e-4: {'met' if parity <= 1e-4 else 'NOT met'} (worst {parity:.1e})")
    print(f"target predict well under import torch: {'met' if pv < 0.5 * tv else 'NOT met'} ({pv / tv:.2f}x)")


if __name__ == "__main__":
    main()
