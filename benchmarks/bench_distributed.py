"""Distributed data-parallel speed-up: `dlkit train cnn --nproc 2` against `--nproc 1`, one run.

    python benchmarks/bench_distributed.py [--epochs 3] [--repeats 2]

Each configuration runs as its own `dlkit train` process (torchrun for 2), alternating, with
one compute thread per process; the table compares train_seconds (the epochs only, no start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(nproc: int, epochs: int, repo: str) -> dict:
    env = {**os.environ, "DLKIT_REPO": repo, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "dlkit", "train", "models/cnn.toml", "--name", f"cnn-p{nproc}",
                          "--epochs", str(epochs), "--set", "patience=0", "--nproc", str(nproc), "--json"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {1: [], 2: []}
    accuracy: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as repo:
        for _ in range(args.repeats):
            for nproc in (1, 2):
                result = run(nproc, args.epochs, repo)
                seconds[nproc].append(result["metrics"]["train_seconds"])
                accuracy[nproc].append(result["metrics"]["test_accuracy"])
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    print(f"cnn on digits, {args.epochs} epochs, {os.cpu_count()} cores, median of {args.repeats}")
    print(f"{'processes':>9} | {'train s':>8} | {'s/epoch':>8} | {'test acc':>8} | speed-up")
    for n, s in ((1, one), (2, two)):
        print(f"{n:>9} | {s:8.2f} | {s / args.epochs:8.2f} | {statistics.mean(accuracy[n]):8.4f} | {one / s:.2f}x")


if __name__ == "__main__":
    main()
