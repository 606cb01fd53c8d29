"""Training on an image folder too large to hold: dlkit streaming from its decoded cache, against
dlkit's in-memory path and a hand-written DataLoader loop that decodes PNGs with the same workers.

    python benchmarks/bench_streaming.py [--images 50000] [--size 64] [--epochs 2] [--workers 2]

Makes ``--images`` random-ish RGB PNGs (two classes) in a temporary folder once, then runs each
variant in its own process (so each one's peak resident memory is its own) and prints a markdown
table: peak RSS of the training process (``ru_maxrss``: it counts shared library pages and any
file pages the process touched), peak PSS and peak private anonymous memory of the process with
its workers (sampled every 50 ms from ``/proc/PID/smaps_rollup``), time to the end of the first
epoch (decoding included), the second epoch's time, and ratios to the hand-written loop. The
hand-written loop trains on dlkit's split sizes (70% of the images) and validates on 10% after
every epoch, as dlkit does. A second table (``--tables layout``) gives channels-last against NCHW
for the CNN and a ResNet-style CNN (``residual = true``) on these images: second-epoch time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CNN = ["channels=[16, 32]", "hidden=64", "patience=0", "batch_size=64"]
MODELS = {"cnn": CNN, "cnn, residual": [*CNN, "residual=true"]}  # the layout table's models

HAND_WRITTEN = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
root, epochs, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
files = sorted((p, i) for i, c in enumerate(sorted(d for d in root.iterdir() if d.is_dir())) for p in c.iterdir())
# dlkit's split sizes (70% train, 10% validation, 20% test), validated after every epoch as dlkit does
order = np.random.default_rng(0).permutation(len(files))
n_train, n_val = int(0.7 * len(files)), int(0.1 * len(files))
train_files = [files[i] for i in order[:n_train]]
val_files = [files[i] for i in order[n_train:n_train + n_val]]

class Folder(torch.utils.data.Dataset):
    def __init__(self, files): self.files = files
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        path, label = self.files[i]
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(a.transpose(2, 0, 1).copy()), label

sys.path.insert(0, sys.argv[4])
from dlkit_cnn.model import CNN
model = CNN([3, 64, 64], 2, channels=[16, 32], hidden=64)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
loader = torch.utils.data.DataLoader(Folder(train_files), batch_size=64, shuffle=True, num_workers=workers)
val_loader = torch.utils.data.DataLoader(Folder(val_files), batch_size=256, num_workers=workers)
started, marks = time.perf_counter(), []
for epoch in range(epochs):
    model.train()
    for x, y in loader:
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    model.eval()
    with torch.no_grad():
        val_loss = sum(torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item() for x, y in val_loader)
    marks.append(time.perf_counter() - started)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first": marks[0], "second": marks[1] - marks[0] if len(marks) > 1 else None, "peak_mb": peak}))
'''

DLKIT = r'''
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from dlkit import ModelRepository, train
root, stream, repo, channels_last = sys.argv[1], sys.argv[4], sys.argv[5], sys.argv[6]
epochs, workers = int(sys.argv[2]), int(sys.argv[3])
from dlkit import Callback
marks = []
class Marks(Callback):  # when each epoch ends, from the start of the run (decoding included)
    def on_epoch_end(self, trainer, epoch, logs): marks.append(time.perf_counter() - started)
started = time.perf_counter()
sets = [f"data.stream={stream}", f"workers={workers}", f"channels_last={channels_last}", *json.loads(sys.argv[7])]
train("cnn", ModelRepository(repo), data=root, epochs=epochs, quiet=True, sets=sets, callbacks=[Marks()])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first": marks[0], "second": marks[1] - marks[0] if len(marks) > 1 else None, "peak_mb": peak}))
'''


def make_images(root: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, level in (("bright", 170), ("dark", 90)):
        (root / label).mkdir(parents=True)
        for i in range(n // 2):
            a = np.clip(rng.normal(level, 50, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a, "RGB").save(root / label / f"{i:06d}.png", compress_level=1)


def _rollup(pid: int) -> dict:
    """``/proc/PID/smaps_rollup`` in MiB (empty for a process that has gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the DataLoader workers, the decoding pool)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def run(code: str, *args: str) -> dict:
    """Run a variant; besides its own peak RSS (``ru_maxrss``, which counts file pages it touched
    and shared library pages), sample every 50 ms the whole process tree's PSS (each shared page
    divided among the processes mapping it: forked workers share the parent's pages) and private
    anonymous memory (Pss_Anon: heap and tensors, no file or page cache)."""
    import threading

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peaks = {"tree_pss_mb": 0.0, "tree_anon_mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            tree = [_rollup(p) for p in _tree(proc.pid)]
            peaks["tree_pss_mb"] = max(peaks["tree_pss_mb"], sum(r.get("Pss", 0) for r in tree))
            peaks["tree_anon_mb"] = max(peaks["tree_anon_mb"], sum(r.get("Pss_Anon", 0) for r in tree))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=7200)
    finally:
        done.set()
        sampler.join()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    return {**json.loads(out.strip().splitlines()[-1]), **peaks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tables", default="memory,layout",
                    help="memory (the three ways of training), layout (channels-last against NCHW), or both")
    ap.add_argument("--folder", type=Path, help="keep the images here and reuse them next time (default: a "
                    "temporary folder); a folder made for other --images/--size is refused")
    args = ap.parse_args()
    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    with tempfile.TemporaryDirectory(prefix="dlkit-stream-") as tmp:
        root = args.folder or Path(tmp) / "images"
        made = root / f".made-{args.images}x{args.size}"
        if not made.exists():
            if root.exists():
                raise SystemExit(f"{root} exists but was not made by this benchmark for --images {args.images} "
                                 f"--size {args.size}")
            started = time.perf_counter()
            make_images(root, args.images, args.size)
            made.touch()
            print(f"made {args.images} {args.size}x{args.size} PNGs in {time.perf_counter() - started:.0f} s "
                  f"({sum(p.stat().st_size for p in root.rglob('*.png')) / 2**20:.0f} MiB)", file=sys.stderr)
        common = [str(root), str(args.epochs), str(args.workers)]
        tables = set(args.tables.split(","))
        rows = {} if "memory" not in tables else {
            "hand-written DataLoader (decodes every epoch)": run(HAND_WRITTEN, *common, plugins),
            "dlkit, streamed from its cache": run(DLKIT, *common, "true", str(Path(tmp) / "r1"), "false",
                                                  json.dumps(CNN)),
            "dlkit, in memory": run(DLKIT, *common, "false", str(Path(tmp) / "r2"), "false", json.dumps(CNN)),
        }
        if rows:  # the fixed cost (interpreter, torch, the model, workers): the same run on 10 batches of images
            small = Path(tmp) / "small"
            make_images(small, 640, args.size)
            fixed = run(DLKIT, str(small), *common[1:], "true", str(Path(tmp) / "r3"), "false", json.dumps(CNN))
        layout = {} if "layout" not in tables else {
            (model, cl): run(DLKIT, *common, "true", str(Path(tmp) / f"r-{i}-{cl}"), cl, json.dumps(sets))
            for i, (model, sets) in enumerate(MODELS.items()) for cl in ("false", "true")}
    second = args.epochs > 1
    if rows:
        base = rows["hand-written DataLoader (decodes every epoch)"]
        print(f"| {args.images} images, {args.size}x{args.size} RGB, {args.workers} workers | peak RSS MiB "
              f"| peak PSS MiB, with workers | peak anonymous PSS MiB, with workers | first epoch s | x |"
              + (" second epoch s | x |" if second else ""))
        print("|---|---|---|---|---|---|" + ("---|---|" if second else ""))
        for name, r in rows.items():
            print(f"| {name} | {r['peak_mb']:.0f} | {r['tree_pss_mb']:.0f} | {r['tree_anon_mb']:.0f} "
                  f"| {r['first']:.1f} | {r['first'] / base['first']:.2f} |"
                  + (f" {r['second']:.1f} | {r['second'] / base['second']:.2f} |" if second else ""))
        # what streaming holds of the data at once: each worker's prefetched batches, one in training
        window = (2 * args.workers + 1) * 64 * 3 * args.size * args.size * 4 / 2**20
        streamed = rows["dlkit, streamed from its cache"]
        print(f"\nStreamed, above the same run on 640 images (PSS {fixed['tree_pss_mb']:.0f}, anonymous "
              f"{fixed['tree_anon_mb']:.0f} MiB): PSS +{streamed['tree_pss_mb'] - fixed['tree_pss_mb']:.0f} MiB, "
              f"anonymous +{streamed['tree_anon_mb'] - fixed['tree_anon_mb']:.0f} MiB; the batch window "
              f"({2 * args.workers + 1} float32 batches of 64) is {window:.0f} MiB.")
    if layout and second:
        print(f"\n| {args.images} images, streamed | NCHW second epoch s | channels-last second epoch s | x |")
        print("|---|---|---|---|")
        for model in MODELS:
            nchw, nhwc = layout[(model, "false")]["second"], layout[(model, "true")]["second"]
            print(f"| {model} | {nchw:.1f} | {nhwc:.1f} | {nhwc / nchw:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
