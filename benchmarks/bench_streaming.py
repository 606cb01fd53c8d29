"""Training on an image folder too large to hold: dlkit streaming from its decoded cache, against
dlkit's in-memory path and a hand-written DataLoader loop that decodes PNGs with the same workers.

    python benchmarks/bench_streaming.py [--images 50000] [--size 64] [--epochs 2] [--workers 2]

Makes ``--images`` random-ish RGB PNGs (two classes) in a temporary folder once, then runs each
variant in its own process (so each one's peak resident memory is its own) and prints a markdown
table: peak RSS, time to the end of the first epoch (decoding included), the second epoch's time,
and ratios to the hand-written loop. A last table gives channels-last against NCHW for the CNN on
these images (epoch time ratio).
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

HAND_WRITTEN = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
root, epochs, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
files = sorted((p, i) for i, c in enumerate(sorted(d for d in root.iterdir() if d.is_dir())) for p in c.iterdir())

class Folder(torch.utils.data.Dataset):
    def __len__(self): return len(files)
    def __getitem__(self, i):
        path, label = files[i]
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(a.transpose(2, 0, 1).copy()), label

sys.path.insert(0, sys.argv[4])
from dlkit_cnn.model import CNN
model = CNN([3, 64, 64], 2, channels=[16, 32], hidden=64)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
loader = torch.utils.data.DataLoader(Folder(), batch_size=64, shuffle=True, num_workers=workers, drop_last=True)
started, marks = time.perf_counter(), []
for epoch in range(epochs):
    model.train()
    for x, y in loader:
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    marks.append(time.perf_counter() - started)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first": marks[0], "second": marks[1] - marks[0] if len(marks) > 1 else None, "peak_mb": peak}))
'''

DLKIT = r'''
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from dlkit import ModelRepository, train
root, epochs, workers, stream, repo, channels_last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
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


def run(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=7200,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    with tempfile.TemporaryDirectory(prefix="dlkit-stream-") as tmp:
        root = Path(tmp) / "images"
        started = time.perf_counter()
        make_images(root, args.images, args.size)
        print(f"made {args.images} {args.size}x{args.size} PNGs in {time.perf_counter() - started:.0f} s "
              f"({sum(p.stat().st_size for p in root.rglob('*.png')) / 2**20:.0f} MiB)", file=sys.stderr)
        common = [str(root), str(args.epochs), str(args.workers)]
        rows = {
            "hand-written DataLoader (decodes every epoch)": run(HAND_WRITTEN, *common, plugins),
            "dlkit, streamed from its cache": run(DLKIT, *common, "true", str(Path(tmp) / "r1"), "false", json.dumps(CNN)),
            "dlkit, in memory": run(DLKIT, *common, "false", str(Path(tmp) / "r2"), "false", json.dumps(CNN)),
        }
        layout = {cl: run(DLKIT, *common, "true", str(Path(tmp) / f"r-{cl}"), cl, json.dumps(CNN))
                  for cl in ("false", "true")}
    base = rows["hand-written DataLoader (decodes every epoch)"]
    print(f"| {args.images} images, {args.size}x{args.size} RGB, {args.workers} workers | peak RSS MiB | "
          f"first epoch s | x | second epoch s | x |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['peak_mb']:.0f} | {r['first']:.1f} | {r['first'] / base['first']:.2f} "
              f"| {r['second']:.1f} | {r['second'] / base['second']:.2f} |")
    print()
    print("| cnn, streamed | second epoch s |\n|---|---|")
    print(f"| NCHW | {layout['false']['second']:.1f} |\n| channels-last | {layout['true']['second']:.1f} "
          f"({layout['true']['second'] / layout['false']['second']:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
