"""Knowledge distillation on digits, side by side with Hinton, Vinyals and Dean (2015) on MNIST.

For each seed: its own stratified split of digits, a CNN teacher from models/cnn.toml, then an
MLP student with at most 1/20 of the teacher's parameters trained twice from the same start and
on the same batches, once on the labels alone (baseline) and once on the teacher's soft targets
(distilled). Prints the mean over the seeds, the share of the teacher-baseline gap that
distillation recovered, and the onnxruntime latency of teacher and student.

    python benchmarks/bench_distill.py                       # 3 seeds, T and alpha the plugin's defaults
    python benchmarks/bench_distill.py --repo /tmp/kd/models # keep the teachers for further runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Hinton et al. 2015, section 3: MNIST test errors out of 10,000.
HINTON = {"teacher": 67, "baseline": 146, "distilled": 74, "test": 10_000}
# Both students train with these (no early stopping: validation cross-entropy on 179 samples is
# too noisy to pick an epoch by; no dropout, as Hinton et al.'s small nets).
STUDENT = ["lr=0.01", "dropout=0.0", "patience=0", "restore_best=false"]


def teacher_for(seed: int, repo, quiet: bool):
    """The seed's CNN teacher (models/cnn.toml), trained once per repository."""
    from dlkit.store.recipe import read_recipe
    from dlkit.training.run import train

    name = f"cnn-digits-split{seed}"
    if repo.versions(name):
        return repo.resolve(name)
    recipe = read_recipe(ROOT / "models" / "cnn.toml")
    recipe.name, recipe.seed = name, seed
    recipe.data["seed"] = seed
    return train(recipe, repo, quiet=quiet).version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hidden", default="[32, 32]", help="the MLP student's hidden sizes")
    parser.add_argument("--temperature", type=float, help="default: the plugin's")
    parser.add_argument("--alpha", type=float, help="default: the plugin's")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                        help=f"student options, as dlkit distill --set (default: {' '.join(STUDENT)})")
    parser.add_argument("--no-latency", dest="latency", action="store_false", help="skip the onnxruntime timing")
    parser.add_argument("--repo", help="model repository to keep teachers and students in (default: temporary)")
    parser.add_argument("--verbose", action="store_true", help="show training progress")
    args = parser.parse_args()

    import torch

    from dlkit.store.repository import ModelRepository
    from dlkit_distill.distill import distill

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    tmp = None if args.repo else tempfile.TemporaryDirectory(prefix="bench-distill-")
    repo = ModelRepository(args.repo or Path(tmp.name) / "models")
    sets = [f"hidden={args.hidden}", *(STUDENT if args.sets is None else args.sets)]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        started = time.perf_counter()
        teacher = teacher_for(seed, repo, quiet=not args.verbose)
        result = distill(teacher, "mlp", sets=sets, temperature=args.temperature, alpha=args.alpha,
                         epochs=args.epochs, baseline=True, seed=seed, repo=repo, quiet=not args.verbose,
                         name=f"mlp-distilled-split{seed}")
        r = result.report
        rows.append({"seed": seed, "teacher": r["teacher"]["test_accuracy"], "baseline": r["baseline"]["test_accuracy"],
                     "distilled": r["student"]["test_accuracy"], "recovered": r["gap_recovered"],
                     "teacher_params": r["teacher"]["params"], "student_params": r["student"]["params"],
                     "test": result.version.meta["data"]["sizes"]["test"],
                     "T": result.version.meta["distill"]["temperature"],
                     "alpha": result.version.meta["distill"]["alpha"]})
        if args.latency:
            rows[-1]["latency"] = latency_ratios(teacher, result.version)
        print(f"seed {seed}: teacher {rows[-1]['teacher']:.4f}  baseline {rows[-1]['baseline']:.4f}  "
              f"distilled {rows[-1]['distilled']:.4f}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    report(rows, args)
    if tmp:
        tmp.cleanup()


def latency_ratios(teacher, student, batch_sizes=(1, 64)) -> dict:
    """onnxruntime p50 latency, teacher / student, per batch size (both exported and timed here)."""
    from dlkit.infer.bench import bench
    from dlkit.export.onnx import export_onnx

    for version in (teacher, student):
        if not version.has_onnx():
            export_onnx(version)
    p50 = {}
    for role, version in (("teacher", teacher), ("student", student)):
        results = bench(version, batch_sizes, runtimes=("onnx",), seconds=1.0, provider="cpu", threads=1)["results"]
        p50[role] = {r["batch_size"]: r["p50_ms"] for r in results}
    return {b: p50["teacher"][b] / p50["student"][b] for b in batch_sizes}


def report(rows: list[dict], args) -> None:
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("teacher", "baseline", "distilled")}
    gap = mean["teacher"] - mean["baseline"]
    recovered = (mean["distilled"] - mean["baseline"]) / gap if gap > 0 else None
    n, first = rows[0]["test"], rows[0]
    errors = {k: (1 - v) * n for k, v in mean.items()}
    h = HINTON
    h_recovered = (h["baseline"] - h["distilled"]) / (h["baseline"] - h["teacher"])
    print(f"\nDistillation: CNN teacher ({first['teacher_params']:,} params) -> MLP {args.hidden} student "
          f"({first['student_params']:,} params, 1/{first['teacher_params'] / first['student_params']:.1f}), "
          f"T={first['T']:g}, alpha={first['alpha']:g}, {args.epochs} epochs, mean of {len(rows)} seeds "
          f"(each its own data split)\n")
    print("| model | digits accuracy | digits test errors (of %d) | Hinton et al. MNIST errors (of 10,000) |" % n)
    print("|---|---|---|---|")
    labels = {"teacher": "teacher", "baseline": "student from scratch", "distilled": "student distilled"}
    for key, label in labels.items():
        print(f"| {label} | {mean[key]:.4f} | {errors[key]:.1f} | {h[key]} |")
    shown = f"{recovered:.0%}" if recovered is not None else "n/a (no gap)"
    print(f"| gap recovered | {shown} |  | {h_recovered:.0%} |")
    if "latency" in first:
        ratios = {b: statistics.mean(r["latency"][b] for r in rows) for b in first["latency"]}
        print("\nonnxruntime latency, teacher / student (p50, 1 thread): "
              + ", ".join(f"batch {b}: {v:.1f}x" for b, v in ratios.items()))
    print("\nper seed: " + "; ".join(
        f"{r['seed']}: {r['teacher']:.4f} / {r['baseline']:.4f} / {r['distilled']:.4f}" for r in rows))
    ok = mean["distilled"] > mean["baseline"] and recovered is not None and recovered >= 0.5
    print(f"target (distilled above baseline, gap recovered >= 50%): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
