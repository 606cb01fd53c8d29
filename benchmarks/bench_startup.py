"""Start-up cost of the CLI with plugins installed: ``dlkit --help`` against ``python -c pass``.

Every dlkit command imports every plugin module, so a plugin's module-level imports are paid on
every command by every user. Measured with the installed plugins (the example plugin included),
then with the five broken throwaway plugins of ``dlkit.testing.BROKEN_PLUGINS`` installed beside
them (each is warned about and skipped). Target: ``dlkit --help`` within 0.3 s.

    python benchmarks/bench_startup.py             # 15 runs of each, median and best
    python benchmarks/bench_startup.py --runs 30
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

TARGET_S = 0.3


def dlkit_script() -> str:
    """The installed ``dlkit`` console script (what users run), beside this interpreter."""
    script = Path(sys.executable).with_name("dlkit")
    return str(script) if script.is_file() else "dlkit"


def timings(cmd: list[str], env: dict, runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of ``runs`` runs of ``cmd``, after one untimed warm-up.

    CPU time (user + system of the child) is what the command costs; wall time is what a user
    waits, and on a busy machine it also counts the time spent waiting for a core.
    """
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        wall.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from dlkit.testing import BROKEN_PLUGINS, install_throwaway

    if not any(ep.name == "example" for ep in metadata.entry_points(group="dlkit")):
        print("note: the example plugin is not installed (pip install -e examples/dlkit-plugin-example)",
              file=sys.stderr)
    # Byte-code caches on, as users have them (pip compiles installed packages); the warm-up run
    # of each command writes them for dlkit's editable sources.
    base = {k: v for k, v in os.environ.items() if not k.startswith("DLKIT_") and k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as site:
        for name, (source, _) in BROKEN_PLUGINS.items():
            install_throwaway(site, name, source)
        broken = {**base, "PYTHONPATH": site}
        dlkit = dlkit_script()
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], base),
            ("dlkit --help", [dlkit, "--help"], base),
            ("dlkit --help, + 5 broken plugins", [dlkit, "--help"], broken),
            ("dlkit plugins, + 5 broken plugins", [dlkit, "plugins"], broken),
        ]
        rows = [(label, *timings(cmd, env, args.runs)) for label, cmd, env in cases]
        listed = subprocess.run([dlkit, "plugins", "--json"], env=broken, capture_output=True, text=True).stdout
    missing = [name for name in BROKEN_PLUGINS if f'"name": "{name}"' not in listed]

    python_s = statistics.median(rows[0][1])
    load = os.getloadavg()[0]
    print(f"dlkit start-up, {args.runs} runs each ({sys.platform}, {os.cpu_count()} CPUs, load average {load:.1f})\n")
    print(f"| command | wall median s | wall best s | CPU median s | x python -c pass (wall) "
          f"| CPU within {TARGET_S} s |")
    print("|---|---|---|---|---|---|")
    for label, wall, cpu in rows:
        median = statistics.median(wall)
        cpu_s = statistics.median(cpu)
        within = "" if label.startswith("python") else ("yes" if cpu_s <= TARGET_S else "NO")
        print(f"| {label} | {median:.3f} | {min(wall):.3f} | {cpu_s:.3f} | {median / python_s:.1f} "
              f"| {within} |")
    print("\nOn an idle machine wall time is about the CPU time; with other work on the cores it is more.")
    print(f"dlkit plugins lists the broken plugins: {'yes, all 5' if not missing else 'missing ' + ', '.join(missing)}")


if __name__ == "__main__":
    main()
