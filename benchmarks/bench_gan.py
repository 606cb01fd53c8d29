"""The GAN of models/gan.toml on digits, measured against the issue's targets.

For each seed: the judge classifier (trained once per repository and cached as
gan-judge-digits, timed apart), then the default recipe. Prints a table of the quality metrics
beside an untrained generator's, the training time, and whether each target is met:

- class coverage 10/10 (of 1,000 samples, classes the judge predicts with p >= 0.9);
- mean max-probability >= 0.9;
- Frechet distance at most half that of an untrained generator;
- training under 3 minutes (the GAN's own train_seconds; the judge is trained once, before).

    python benchmarks/bench_gan.py                         # seed 0, temporary repository
    python benchmarks/bench_gan.py --seeds 0,1,2 --repo /tmp/gan --samples-to docs/images/gan-samples.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"class_coverage": 10, "mean_max_probability": 0.9, "frechet_ratio": 0.5, "train_seconds": 180.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--recipe", default=str(ROOT / "models" / "gan.toml"))
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--repo", help="model repository to keep the judge and the GANs in (default: temporary)")
    parser.add_argument("--samples-to", help="copy the first seed's samples.png here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these small convolutions gain little from a second one, "
                             "and on a shared 2-core machine a second thread only adds contention)")
    parser.add_argument("--verbose", action="store_true", help="show training progress")
    args = parser.parse_args()

    import torch
    from dlkit_gan import TRAIN_DEFAULTS
    from dlkit_gan.quality import obtain_judge

    from dlkit.data.load import load_dataset
    from dlkit.store.recipe import read_recipe
    from dlkit.store.repository import ModelRepository
    from dlkit.training.run import train

    torch.set_num_threads(args.threads)
    tmp = None if args.repo else tempfile.TemporaryDirectory(prefix="bench-gan-")
    repo = ModelRepository(args.repo or Path(tmp.name) / "models")
    base = read_recipe(args.recipe)
    if args.epochs:
        base.train["epochs"] = args.epochs

    data = dict(base.data)
    dataset = load_dataset(data.pop("source"), {k: v for k, v in data.items() if k != "seed"}, int(data.get("seed", 0)))
    started = time.perf_counter()
    judge_epochs = base.train.get("judge_epochs", TRAIN_DEFAULTS["judge_epochs"])
    judge = obtain_judge("auto", dataset, repo, base.seed, judge_epochs, quiet=not args.verbose)
    judge_seconds = time.perf_counter() - started
    print(f"judge {judge.ref}: test accuracy {judge.meta['metrics']['test_accuracy']:.4f} "
          f"({judge_seconds:.0f} s, reused when cached)", file=sys.stderr)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        recipe = read_recipe(args.recipe)
        recipe.train.update(base.train)
        recipe.seed, recipe.name = seed, f"{base.name or 'gan-digits'}-seed{seed}"
        started = time.perf_counter()
        result = train(recipe, repo, quiet=not args.verbose)
        wall = time.perf_counter() - started
        m = result.metrics
        rows.append({"seed": seed, "wall": wall, "path": result.version.path, "params": result.params, **m})
        print(f"seed {seed}: coverage {m['class_coverage']}/{m['classes']}  "
              f"mean max-p {m['mean_max_probability']:.3f}  "
              f"FD {m['frechet_distance']:.2f} (untrained {m['frechet_distance_untrained']:.2f})  "
              f"{m['train_seconds']:.0f} s", file=sys.stderr)
    report(rows, judge, base, args)
    if args.samples_to:
        dest = Path(args.samples_to)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rows[0]["path"] / "samples.png", dest)
        print(f"\nsamples of seed {rows[0]['seed']}: {rows[0]['path'] / 'samples.png'} -> {dest}")
    if tmp:
        tmp.cleanup()


def report(rows: list[dict], judge, recipe, args) -> None:
    epochs = recipe.train.get("epochs")
    print(f"\nGAN on digits: {recipe.arch} recipe {Path(args.recipe).name}, {epochs} epochs, {rows[0]['params']:,} "
          f"parameters (G + D), {args.threads} torch threads; judge {judge.ref} "
          f"(test accuracy {judge.meta['metrics']['test_accuracy']:.4f})\n")
    print("| seed | class coverage | mean max-probability | label accuracy | Frechet distance | untrained G | ratio "
          "| train seconds | wall seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['class_coverage']}/{r['classes']} | {r['mean_max_probability']:.3f} "
              f"| {r.get('label_accuracy', float('nan')):.3f} | {r['frechet_distance']:.2f} "
              f"| {r['frechet_distance_untrained']:.2f} | {r['frechet_ratio']:.3f} | {r['train_seconds']:.0f} "
              f"| {r['wall']:.0f} |")
    checks = {
        "class coverage 10/10": all(r["class_coverage"] >= TARGETS["class_coverage"] for r in rows),
        "mean max-probability >= 0.9": all(r["mean_max_probability"] >= TARGETS["mean_max_probability"] for r in rows),
        "Frechet distance <= 1/2 of untrained": all(r["frechet_ratio"] <= TARGETS["frechet_ratio"] for r in rows),
        "training < 3 min": all(r["train_seconds"] < TARGETS["train_seconds"] for r in rows),
    }
    print()
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
