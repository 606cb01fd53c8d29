"""`make bench`: every benchmark in benchmarks/, each with its own small preset, one after another.

The presets are smoke runs (one seed, a few epochs, sub-second timings): they show that every
benchmark runs and roughly where it stands, in a few minutes on a small machine. The numbers in
README's tables come from each benchmark's full defaults (see its docstring). Each benchmark runs
in its own process, in a temporary repository where it takes one, with torch on one thread;
its output is passed through, and a summary of exit codes and wall times ends the run.

    python benchmarks/run_all.py                    # every benchmark, small presets
    python benchmarks/run_all.py --only training,serve
    python benchmarks/run_all.py --list             # the commands, without running them
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> arguments of benchmarks/bench_<name>.py; "{repo}" is a fresh temporary repository.
PRESETS: dict[str, list[str]] = {
    "startup": ["--runs", "5"],
    "training": ["--quick", "--threads", "1", "--spell-archs", "mlp"],
    "runtime": ["--repo", "{repo}", "--epochs", "1", "--seconds", "0.3", "--runs", "2"],
    "quantize": ["--repo", "{repo}", "--models", "mlp", "--epochs", "2", "--measure-seconds", "0.3",
                 "--seconds", "0.3", "--threads", "1", "--no-peers"],
    "regression": ["--seeds", "0", "--epochs", "20"],
    "distributed": ["--epochs", "1", "--repeats", "1"],
    "streaming": ["--images", "400", "--size", "16", "--epochs", "1", "--workers", "1"],
    "gan": ["--repo", "{repo}", "--epochs", "1"],
    "distill": ["--repo", "{repo}", "--seeds", "0", "--epochs", "5", "--no-latency"],
    "serve": ["--repo", "{repo}", "--seconds", "0.5", "--slice", "0.25"],
    "cluster": ["--seeds", "1", "--epochs", "5", "--data", "wine"],
}
TIMEOUT_S = 900  # one benchmark's ceiling: a hung one must not hold `make bench` forever


def commands(names: list[str], tmp: Path) -> list[tuple[str, list[str]]]:
    """The command line of each named benchmark, its repository a folder of its own in ``tmp``."""
    out = []
    for name in names:
        args = [a.replace("{repo}", str(tmp / name / "models")) for a in PRESETS[name]]
        out.append((name, [sys.executable, str(HERE / f"bench_{name}.py"), *args]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated benchmarks (default all: {', '.join(PRESETS)})")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(PRESETS)})")
    missing = sorted(p.stem[6:] for p in HERE.glob("bench_*.py") if p.stem[6:] not in PRESETS)
    if missing:  # a new benchmark must get a preset here, or `make bench` would skip it silently
        print(f"run_all: no preset for {', '.join(missing)}: add one to PRESETS", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "DLKIT_THREADS": os.environ.get("DLKIT_THREADS", "1")}
    results = []
    with tempfile.TemporaryDirectory(prefix="dlkit-bench-") as tmp:
        for name, cmd in commands(names, Path(tmp)):
            shown = " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))
            print(f"\n== {name}: {shown}", flush=True)
            if args.list:
                continue
            started = time.perf_counter()
            try:
                code = subprocess.run(cmd, env=env, timeout=TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            results.append((name, code, time.perf_counter() - started))
    if args.list:
        return 0
    print("\n| benchmark | exit | wall s |\n|---|---|---|")
    for name, code, seconds in results:
        print(f"| {name} | {code} | {seconds:.1f} |")
    print(f"| all | | {sum(s for _, _, s in results):.1f} |")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
