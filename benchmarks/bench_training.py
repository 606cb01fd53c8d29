"""The foundation's measurements, side by side in one process: accuracy and time of the default
recipes, the supervised trainer against a hand-written PyTorch loop, and `dlkit --help` start-up.

(a) models/mlp.toml, cnn.toml and rnn.toml on digits, one run per seed: mean and worst test
    accuracy, the trainer's own seconds and the whole run's wall seconds (data, plot, files).
    Targets: mean accuracy mlp >= 0.97, cnn >= 0.985, rnn >= 0.96; each run under 60 s.
(b) One epoch of dlkit's SupervisedTrainer against a minimal hand-written loop (shuffle, forward,
    cross-entropy, backward, AdamW step; then the validation pass any loop needs for early
    stopping) on the same model, data, batches and optimizer, in lockstep: a callback runs one
    hand-written epoch before each of dlkit's, so both see the same machine load. Epochs 2 to
    n-1 of each run are the steady state (training, validation, callbacks, the checkpoint);
    the cost per run (set-up, the final curves.png) is shown apart. Target: ratio <= 1.10.
(c) `dlkit --help` against `python -c pass`, alternating runs. Target: <= 0.3 s.
(d) The two spellings through the real CLI, one subprocess per run: `dlkit train ARCH --data
    digits` (the architecture's defaults) against `dlkit train models/ARCH.toml`, per seed.
    Target: the short spelling's mean test accuracy within 0.005 of the recipe's.

    python benchmarks/bench_training.py               # 3 seeds; about 10 minutes on 2 idle cores
    python benchmarks/bench_training.py --quick       # smoke run: 1 seed, 2 epochs, fewer repeats
    python benchmarks/bench_training.py --only overhead,startup --threads 1
    python benchmarks/bench_training.py --only spellings --spell-archs rnn --threads 1
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
from pathlib import Path

from dlkit import Callback

ROOT = Path(__file__).resolve().parents[1]
ACCURACY_TARGETS = {"mlp": 0.97, "cnn": 0.985, "rnn": 0.96}
SECONDS_TARGET = 60.0
OVERHEAD_TARGET = 1.10
STARTUP_TARGET = 0.3
SPELLING_GAP = 0.005


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- (a) the default recipes ------------------------------------------------------------------------
def bench_recipes(seeds: list[int], epochs: int | None, repo_root: Path) -> list[dict]:
    from dlkit.store.recipe import read_recipe
    from dlkit.store.repository import ModelRepository
    from dlkit.training.run import train

    repo = ModelRepository(repo_root)
    rows = []
    for arch in ACCURACY_TARGETS:
        runs = []
        for seed in seeds:
            recipe = read_recipe(ROOT / "models" / f"{arch}.toml")
            recipe.name, recipe.seed = f"{arch}-bench-seed{seed}", seed
            if epochs:
                recipe.train["epochs"] = epochs
            started, cpu = time.perf_counter(), cpu_seconds()
            result = train(recipe, repo, quiet=True)
            runs.append({"acc": result.metrics["test_accuracy"], "train_s": result.metrics["train_seconds"],
                         "wall_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu,
                         "epochs": result.metrics["epochs"]})
            print(f"  {arch} seed {seed}: test accuracy {runs[-1]['acc']:.4f}, {runs[-1]['epochs']} epochs, "
                  f"{runs[-1]['wall_s']:.1f} s", file=sys.stderr)
        rows.append({"arch": arch, "runs": runs})
    return rows


def print_recipes(rows: list[dict], seeds: list[int]) -> None:
    print(f"\n(a) default recipes on digits, seeds {','.join(map(str, seeds))}\n")
    print("| recipe | mean test acc | worst | target | met | epochs | trainer s (mean) | wall s (max) "
          "| CPU s (mean) | under 60 s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        runs, target = row["runs"], ACCURACY_TARGETS[row["arch"]]
        mean = statistics.mean(r["acc"] for r in runs)
        wall = max(r["wall_s"] for r in runs)
        print(f"| models/{row['arch']}.toml | {mean:.4f} | {min(r['acc'] for r in runs):.4f} | >= {target} "
              f"| {'yes' if mean >= target else 'NO'} | {'/'.join(str(r['epochs']) for r in runs)} "
              f"| {statistics.mean(r['train_s'] for r in runs):.1f} | {wall:.1f} "
              f"| {statistics.mean(r['cpu_s'] for r in runs):.1f} | {'yes' if wall < SECONDS_TARGET else 'NO'} |")


# -- (d) `dlkit train ARCH` against `dlkit train models/ARCH.toml` ----------------------------------
def bench_spellings(archs: list[str], seeds: list[int], epochs: int | None, threads: int | None,
                    repo_root: Path) -> list[dict]:
    import json

    dlkit = Path(sys.executable).with_name("dlkit")
    rows = []
    for arch in archs:
        row: dict = {"arch": arch, "short": [], "recipe": []}
        for seed in seeds:
            for spelling, target in (("short", [arch, "--data", "digits"]),
                                     ("recipe", [str(ROOT / "models" / f"{arch}.toml")])):
                cmd = [str(dlkit), "--repo", str(repo_root), "train", *target, "--seed", str(seed),
                       "--name", f"{arch}-{spelling}-{seed}", "--json"]
                cmd += ["--threads", str(threads)] if threads else []
                cmd += ["--epochs", str(epochs)] if epochs else []
                started = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                acc = json.loads(done.stdout)["metrics"]["test_accuracy"]
                row[spelling].append({"acc": acc, "wall_s": time.perf_counter() - started})
                print(f"  dlkit train {' '.join(target)} --seed {seed}: test accuracy {acc:.4f}",
                      file=sys.stderr)
        rows.append(row)
    return rows


def print_spellings(rows: list[dict], seeds: list[int], threads: int | None) -> None:
    print(f"\n(d) `dlkit train ARCH --data digits` against `dlkit train models/ARCH.toml`, seeds "
          f"{','.join(map(str, seeds))}, --threads {threads or 'default'}\n")
    print("| arch | short: test acc per seed | mean | recipe: test acc per seed | mean | gap | target | met "
          "| wall s (mean, short/recipe) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        means = {s: statistics.mean(x["acc"] for x in r[s]) for s in ("short", "recipe")}
        walls = {s: statistics.mean(x["wall_s"] for x in r[s]) for s in ("short", "recipe")}
        gap = means["recipe"] - means["short"]
        accs = {s: " ".join(f"{x['acc']:.4f}" for x in r[s]) for s in ("short", "recipe")}
        print(f"| {r['arch']} | {accs['short']} | {means['short']:.4f} "
              f"| {accs['recipe']} | {means['recipe']:.4f} | {gap:+.4f} "
              f"| <= {SPELLING_GAP} | {'yes' if gap <= SPELLING_GAP else 'NO'} "
              f"| {walls['short']:.1f}/{walls['recipe']:.1f} |")


# -- (b) trainer overhead ---------------------------------------------------------------------------
def now() -> tuple[float, float]:
    """(wall, CPU) seconds: wall is what a user waits; CPU is the work, whatever else the cores run."""
    return time.perf_counter(), time.process_time()


class HandWritten:
    """The minimal loop: shuffle, forward, cross-entropy, backward, AdamW step, then the
    validation pass any loop needs for early stopping. Same batches as dlkit's."""

    def __init__(self, model, data, config: dict, seed: int):
        import torch

        self.model, self.seed = model, seed
        self.x, self.y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train, dtype=torch.long)
        self.xv, self.yv = torch.as_tensor(data.x_val), torch.as_tensor(data.y_val, dtype=torch.long)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
        n, self.bs = len(self.x), config["batch_size"]
        self.stops = [i for i in range(0, n, self.bs) if n - i > 1 or i == 0]

    def epoch(self, epoch: int) -> None:
        import torch
        import torch.nn.functional as F

        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        self.model.train()
        for i in self.stops:
            idx = perm[i:i + self.bs]
            loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.model.eval()
        with torch.inference_mode():
            out = self.model(self.xv)
            F.cross_entropy(out, self.yv).item(), (out.argmax(1) == self.yv).float().mean().item()


class Lockstep(Callback):
    """A trainer callback that runs one hand-written epoch before each of dlkit's, so the two
    alternate epoch by epoch and share whatever else the machine is doing at that moment."""

    def __init__(self, hand: HandWritten):
        self.hand = hand
        self.dlkit_start = None
        self.pairs: list[tuple[tuple[float, float], tuple[float, float]]] = []  # (dlkit, hand) per epoch
        self.writes: list[float] = []  # how long each checkpoint write still had to go

    def on_train_start(self, trainer): ...

    def on_epoch_start(self, trainer, epoch):
        ended = now()  # dlkit's previous epoch is over: its checkpoint is being written by a thread
        if self.dlkit_start is not None:
            dlkit = (ended[0] - self.dlkit_start[0], ended[1] - self.dlkit_start[1])
            self.pairs[-1] = (dlkit, self.pairs[-1][1])
        # The write finishes before the hand-written epoch starts, counted on neither side: a
        # real run overlaps it with the next epoch, and the hand-written epoch gets the machine
        # to itself. Its duration is reported apart.
        trainer.checkpoints.wait()
        self.writes.append(now()[0] - ended[0])
        started = now()
        self.hand.epoch(epoch)
        self.dlkit_start = now()
        self.pairs.append((None, (self.dlkit_start[0] - started[0], self.dlkit_start[1] - started[1])))

    def on_step_end(self, trainer, step, logs): ...

    def on_epoch_end(self, trainer, epoch, logs): ...

    def on_train_end(self, trainer, logs): ...

    def teardown(self, trainer): ...


def bench_overhead(archs: list[str], repeats: int, epochs: int, work: Path) -> list[dict]:
    import torch

    from dlkit.data.load import load_dataset
    from dlkit.plugins import get_registry
    from dlkit.store.recipe import check_options, read_recipe
    from dlkit.training.build import build_model
    from dlkit.training.run import TrainRun
    from dlkit.training.supervised import SupervisedTrainer

    registry = get_registry()
    defaults = registry.trainer("supervised").defaults
    data = load_dataset("digits")
    rows = []
    for arch in archs:
        recipe = read_recipe(ROOT / "models" / f"{arch}.toml")
        spec = registry.model(arch)
        hparams = check_options("model", recipe.model, spec.defaults)
        # The recipe's batch size and learning rate, AdamW both sides, no augmentation (the hand
        # loop has none), no early stop.
        options = {**recipe.train, "optimizer": "adamw", "augment": 0, "patience": 0}
        torch.manual_seed(0)
        start_state = build_model(spec, hparams, data.input_spec, data.num_classes).state_dict()

        # The loop's values are bound as defaults: each arch's helpers use that arch's model.
        def fresh(spec=spec, hparams=hparams, start_state=start_state):
            model = build_model(spec, hparams, data.input_spec, data.num_classes)
            model.load_state_dict(start_state)
            return model

        def dlkit_fit(n_epochs: int, callbacks: list, options=options, spec=spec, fresh=fresh) -> None:
            config = check_options("train", {**options, "epochs": n_epochs}, defaults)
            with tempfile.TemporaryDirectory(dir=work) as workdir:
                run = TrainRun(model=fresh(), spec=spec, data=data, config=config, seed=0, workdir=Path(workdir),
                               quiet=True, callbacks=callbacks)
                SupervisedTrainer(run).fit()

        config = check_options("train", options, defaults)
        dlkit_fit(1, []), HandWritten(fresh(), data, config, 0).epoch(1)  # warm-up: first-call costs
        pairs, writes = [], []
        for _ in range(repeats):
            lockstep = Lockstep(HandWritten(fresh(), data, config, 0))
            dlkit_fit(epochs, [lockstep])
            # Epoch 1 pays warm-ups, the last one the final plot: the pairs between are the steady state.
            pairs += lockstep.pairs[1:-1]
            writes += lockstep.writes[1:]
        whole = {"dlkit": [], "hand": []}  # whole 1-epoch runs, set-up to files, alternating
        for r in range(repeats):
            for name in ("dlkit", "hand") if r % 2 == 0 else ("hand", "dlkit"):
                started = now()
                dlkit_fit(1, []) if name == "dlkit" else HandWritten(fresh(), data, config, 0).epoch(1)
                whole[name].append(now()[0] - started[0])
        row = {"arch": arch, "batch_size": config["batch_size"], "epochs": len(pairs)}
        for i, name in enumerate(("dlkit", "hand")):
            row[name] = tuple(statistics.median(p[i][k] for p in pairs) for k in (0, 1))
        row["ratio"] = statistics.median(p[0][0] / p[1][0] for p in pairs)
        row["ratio_cpu"] = statistics.median(p[0][1] / p[1][1] for p in pairs)
        row["one_dlkit"], row["one_hand"] = statistics.median(whole["dlkit"]), statistics.median(whole["hand"])
        row["write"] = statistics.median(writes)
        rows.append(row)
        print(f"  {arch}: dlkit {row['dlkit'][0]:.3f} s/epoch, hand-written {row['hand'][0]:.3f} s/epoch (wall)",
              file=sys.stderr)
    return rows


def print_overhead(rows: list[dict], repeats: int) -> None:
    print(f"\n(b) trainer overhead: the default recipes' models on digits; epochs alternate (hand-written, "
          f"dlkit) in {repeats} runs; medians, wall (CPU) seconds\n")
    print("| model | batch | epoch pairs | dlkit s/epoch | hand-written s/epoch | ratio wall | ratio CPU | target "
          "| met | checkpoint write left s | 1-epoch run dlkit s | hand s | dlkit extra per run s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['batch_size']} | {r['epochs']} | {r['dlkit'][0]:.3f} ({r['dlkit'][1]:.3f}) "
              f"| {r['hand'][0]:.3f} ({r['hand'][1]:.3f}) | {r['ratio']:.3f} | {r['ratio_cpu']:.3f} "
              f"| <= {OVERHEAD_TARGET} | {'yes' if r['ratio'] <= OVERHEAD_TARGET else 'NO'} "
              f"| {r['write']:.3f} | {r['one_dlkit']:.3f} | {r['one_hand']:.3f} "
              f"| {r['one_dlkit'] - r['one_hand']:.3f} |")
    print("\nA dlkit epoch: training, validation, callbacks and the checkpoint's snapshot; the checkpoint file "
          "is written by a thread\nduring the next epoch (\"write left\": how long it still ran when the epoch "
          "ended). The extra per run is set-up and the final curves.png.")


# -- (c) start-up -----------------------------------------------------------------------------------
def bench_startup(runs: int) -> list[dict]:
    dlkit = Path(sys.executable).with_name("dlkit")
    # Byte-code caches on, as users have them: the warm-up run writes them for dlkit's sources.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLKIT_") and k != "PYTHONDONTWRITEBYTECODE"}
    cases = {"python -c pass": [sys.executable, "-c", "pass"],
             "dlkit --help": [str(dlkit) if dlkit.is_file() else "dlkit", "--help"]}
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in cases}
    for cmd in cases.values():  # warm-up: byte-code caches written
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    for _ in range(runs):
        for name, cmd in cases.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times[name]["wall"].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name]["cpu"].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return [{"name": n, "wall": statistics.median(t["wall"]), "best": min(t["wall"]),
             "cpu": statistics.median(t["cpu"])}
            for n, t in times.items()]


def print_startup(rows: list[dict], runs: int) -> None:
    print(f"\n(c) start-up, {runs} alternating runs each, medians\n")
    print("| command | wall s | best wall s | CPU s | x python | target | met |")
    print("|---|---|---|---|---|---|---|")
    floor = rows[0]["wall"]
    for r in rows:
        target = "" if r["name"].startswith("python") else f"<= {STARTUP_TARGET} s"
        met = "" if not target else ("yes" if r["wall"] <= STARTUP_TARGET else "NO")
        print(f"| {r['name']} | {r['wall']:.3f} | {r['best']:.3f} | {r['cpu']:.3f} | {r['wall'] / floor:.1f} "
              f"| {target} | {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, few repeats")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=3, help="trainer overhead: runs per model")
    parser.add_argument("--epochs", type=int, default=10, help="trainer overhead: epochs per run")
    parser.add_argument("--runs", type=int, default=20, help="start-up runs")
    parser.add_argument("--only", default="accuracy,overhead,startup,spellings")
    parser.add_argument("--archs", default="mlp,cnn,rnn", help="models for the overhead comparison")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--spell-archs", default="mlp,cnn,rnn", help="architectures for the spellings check")
    args = parser.parse_args()
    only = set(args.only.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = None
    if args.quick:
        seeds, epochs, args.repeats, args.epochs, args.runs = seeds[:1], 2, 1, 4, 3

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"dlkit training benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        results = {}
        if "accuracy" in only:
            results["accuracy"] = bench_recipes(seeds, epochs, Path(tmp) / "models")
        if "overhead" in only:
            results["overhead"] = bench_overhead(args.archs.split(","), args.repeats, args.epochs, Path(tmp))
        if "startup" in only:
            results["startup"] = bench_startup(args.runs)
        if "spellings" in only:
            results["spellings"] = bench_spellings(args.spell_archs.split(","), seeds, epochs, args.threads,
                                                   Path(tmp) / "spellings")
    if "accuracy" in results:
        print_recipes(results["accuracy"], seeds)
    if "overhead" in results:
        print_overhead(results["overhead"], args.repeats)
    if "startup" in results:
        print_startup(results["startup"], args.runs)
    if "spellings" in results:
        print_spellings(results["spellings"], seeds, args.threads)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (wall times on a shared machine include waiting "
          f"for a core; CPU seconds do not)")


if __name__ == "__main__":
    main()
