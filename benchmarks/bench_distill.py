"""Knowledge distillation on digits, side by side with a minimal hand-written KD loop and with
Hinton, Vinyals and Dean (2015) on MNIST.

The task with a gap: the student may use the labels of only ``--labelled`` training images per
class (default 5); the teacher (a CNN from models/cnn.toml, trained once on the whole training
split of the teacher's seed) labels the rest of the training split, the transfer set. For each
student seed: the labelled subset, the initial weights and the batch order are the seed's; an MLP
student with 1/20 of the teacher's parameters is trained from the same start four ways: dlkit's
baseline (labels only) and dlkit distill, and the same two with a plain PyTorch loop of the
same loss, optimiser, schedule and epochs. Prints the mean and spread over the seeds of the share
of the teacher-baseline gap each recovered. ``--labelled 0`` is the old setting (every label;
the gap there is a point or two, within a few test images).

    python benchmarks/bench_distill.py                             # 5 student seeds, 5 labels per class
    python benchmarks/bench_distill.py --repo /tmp/kd/models       # keep the teacher for further runs
    python benchmarks/bench_distill.py --labelled 0 --teacher-seeds 0,1,2   # every label, a teacher per seed
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
    parser.add_argument("--seeds", default="0,1,2,3,4", help="student seeds (labelled subset, init, batches)")
    parser.add_argument("--teacher-seeds", default="0", help="teacher seeds (data split); students cycle over them")
    parser.add_argument("--labelled", type=int, default=5, help="labelled training images per class (0: all)")
    parser.add_argument("--no-handwritten", dest="handwritten", action="store_false",
                        help="skip the plain PyTorch KD loop")
    parser.add_argument("--hidden", default="[32, 32]", help="the MLP student's hidden sizes")
    parser.add_argument("--temperature", type=float, help="default: the plugin's")
    parser.add_argument("--alpha", type=float, help="default: the plugin's")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                        help=f"student options, as dlkit distill --set (default: {' '.join(STUDENT)})")
    parser.add_argument("--no-latency", dest="latency", action="store_false", help="skip the onnxruntime timing")
    parser.add_argument("--repo", help="model repository to keep teachers and students in (default: temporary)")
    parser.add_argument("--verbose", action="store_true", help="show training progress")
    args = parser.parse_args()

    import torch
    from dlkit_distill.distill import distill

    from dlkit.store.repository import ModelRepository

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    tmp = None if args.repo else tempfile.TemporaryDirectory(prefix="bench-distill-")
    repo = ModelRepository(args.repo or Path(tmp.name) / "models")
    sets = [f"hidden={args.hidden}", f"labelled={args.labelled}", *(STUDENT if args.sets is None else args.sets)]
    rows = []
    teacher_seeds = [int(s) for s in args.teacher_seeds.split(",")]
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        teacher = teacher_for(teacher_seeds[i % len(teacher_seeds)], repo, quiet=not args.verbose)
        result = distill(teacher, "mlp", sets=sets, temperature=args.temperature, alpha=args.alpha,
                         epochs=args.epochs, baseline=True, seed=seed, repo=repo, quiet=not args.verbose,
                         name=f"mlp-distilled-seed{seed}")
        r = result.report
        rows.append({"seed": seed, "teacher": r["teacher"]["test_accuracy"], "baseline": r["baseline"]["test_accuracy"],
                     "distilled": r["student"]["test_accuracy"], "recovered": r["gap_recovered"],
                     "teacher_params": r["teacher"]["params"], "student_params": r["student"]["params"],
                     "test": result.version.meta["data"]["sizes"]["test"],
                     "T": result.version.meta["distill"]["temperature"],
                     "alpha": result.version.meta["distill"]["alpha"]})
        if args.handwritten:
            from handwritten_kd import kd_pair

            cfg = result.version.meta["train"]
            rows[-1]["hand_baseline"], rows[-1]["hand_distilled"] = kd_pair(
                teacher, result.version.meta["hparams"], cfg, seed, args.labelled)
        if args.latency:
            rows[-1]["latency"] = latency_ratios(teacher, result.version)
        print(f"seed {seed}: teacher {rows[-1]['teacher']:.4f}  baseline {rows[-1]['baseline']:.4f}  "
              f"distilled {rows[-1]['distilled']:.4f}  hand-written {rows[-1].get('hand_baseline', 0):.4f} / "
              f"{rows[-1].get('hand_distilled', 0):.4f}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    report(rows, args)
    if tmp:
        tmp.cleanup()


def latency_ratios(teacher, student, batch_sizes=(1, 64)) -> dict:
    """onnxruntime p50 latency, teacher / student, per batch size (both exported and timed here)."""
    from dlkit.export.onnx import export_onnx
    from dlkit.infer.bench import bench

    for version in (teacher, student):
        if not version.has_onnx():
            export_onnx(version)
    p50 = {}
    for role, version in (("teacher", teacher), ("student", student)):
        results = bench(version, batch_sizes, runtimes=("onnx",), seconds=1.0, provider="cpu", threads=1)["results"]
        p50[role] = {r["batch_size"]: r["p50_ms"] for r in results}
    return {b: p50["teacher"][b] / p50["student"][b] for b in batch_sizes}


def recovered_stats(rows: list[dict], baseline: str, distilled: str) -> tuple[float, float]:
    """Mean and standard deviation over the seeds of each seed's share of the gap recovered."""
    shares = [(r[distilled] - r[baseline]) / (r["teacher"] - r[baseline]) for r in rows if r["teacher"] > r[baseline]]
    if not shares:
        return float("nan"), float("nan")
    return statistics.mean(shares), statistics.stdev(shares) if len(shares) > 1 else 0.0


def report(rows: list[dict], args) -> None:
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("teacher", "baseline", "distilled")}
    gap = mean["teacher"] - mean["baseline"]
    recovered = (mean["distilled"] - mean["baseline"]) / gap if gap > 0 else None
    n, first = rows[0]["test"], rows[0]
    errors = {k: (1 - v) * n for k, v in mean.items()}
    h = HINTON
    h_recovered = (h["baseline"] - h["distilled"]) / (h["baseline"] - h["teacher"])
    labels = f"{args.labelled} labelled images per class" if args.labelled else "every training label"
    print(f"\nDistillation: CNN teacher ({first['teacher_params']:,} params) -> MLP {args.hidden} student "
          f"({first['student_params']:,} params, 1/{first['teacher_params'] / first['student_params']:.1f}), "
          f"T={first['T']:g}, alpha={first['alpha']:g}, {args.epochs} epochs, {labels}, mean of {len(rows)} "
          f"student seeds (teacher seeds {args.teacher_seeds})\n")
    for name, base, dist in (("dlkit distill", "baseline", "distilled"),
                             ("hand-written KD loop", "hand_baseline", "hand_distilled")):
        if dist in first:
            m, sd = recovered_stats(rows, base, dist)
            print(f"| {name} | baseline {statistics.mean(r[base] for r in rows):.4f} | distilled "
                  f"{statistics.mean(r[dist] for r in rows):.4f} | gap recovered {m:.0%} ± {sd:.0%} (per seed) |")
    print()
    print(f"| model | digits accuracy | digits test errors (of {n}) | Hinton et al. MNIST errors (of 10,000) |")
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
    print("\nper seed (teacher / baseline / distilled [/ hand-written baseline / distilled]): " + "; ".join(
        f"{r['seed']}: {r['teacher']:.4f} / {r['baseline']:.4f} / {r['distilled']:.4f}"
        + (f" / {r['hand_baseline']:.4f} / {r['hand_distilled']:.4f}" if "hand_distilled" in r else "") for r in rows))
    ok = mean["distilled"] > mean["baseline"] and recovered is not None and recovered >= 0.5
    print(f"target (distilled above baseline, gap recovered >= 50%): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
