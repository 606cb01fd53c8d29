"""Peers table: ``dlkit quantize`` (auto) against onnxruntime's defaults on the same float ONNX files.

For each model (digits MLP, CNN at three widths, LSTM, GRU; recipes from models/*.toml, trained
``--epochs`` epochs, kept in ``--repo``): the float32 graph, onnxruntime's ``quantize_dynamic``
and ``quantize_static`` with their default arguments (what a user gets from the documentation's
first call; static calibrated on the same stratified 256 training samples dlkit uses), and the
model ``dlkit quantize`` chooses. All are measured afresh in one harness: size on disk, test
accuracy, test samples whose top class differs from float32's, latency at batch 1 and 64 with one
onnxruntime thread, every model taking turns call after call (the median of per-round minimums,
with its relative spread). Ratios are to float32 in the same run.

    python benchmarks/bench_quantize.py --repo /tmp/bq/models            # every model, 5 epochs
    python benchmarks/bench_quantize.py --repo /tmp/bq/models --models mlp,cnn-s --seconds 2

NNCF and onnx-neural-compressor are not in this table (see docs/quantize.md: they need their
own virtual environment, and this machine's two shared cores could not time them fairly today).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # table name -> (recipe, model name, model overrides)
    "mlp": ("mlp.toml", "mlp-digits", {}),
    "cnn-s": ("cnn.toml", "cnn-digits-s", {"channels": [8, 16], "hidden": 32}),
    "cnn-m": ("cnn.toml", "cnn-digits", {}),
    "cnn-l": ("cnn.toml", "cnn-digits-l", {"channels": [96, 192], "hidden": 256}),
    "lstm": ("rnn.toml", "rnn-digits", {}),
    "gru": ("rnn.toml", "gru-digits", {"cell": "gru"}),
}


def trained(repo, key: str, epochs: int):
    from dlkit.export.onnx import export_onnx
    from dlkit.store.recipe import read_recipe
    from dlkit.training.run import train

    recipe_file, name, overrides = MODELS[key]
    if not repo.versions(name):
        recipe = read_recipe(ROOT / "models" / recipe_file)
        recipe.name = name
        recipe.model.update(overrides)
        recipe.train["epochs"] = epochs
        started = time.perf_counter()
        train(recipe, repo, quiet=True)
        print(f"{key}: trained {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    parent = repo.resolve(name)
    if not parent.has_onnx():
        export_onnx(parent, exporter="torchscript")
    return parent


def peers(parent, folder: Path, calibration: dict) -> dict[str, Path]:
    """onnxruntime's quantize_dynamic and quantize_static with default arguments."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    out = {}
    try:
        quantize_dynamic(str(parent.onnx_path), str(folder / "ort-dynamic.onnx"))
        out["ort-dynamic"] = folder / "ort-dynamic.onnx"
    except Exception as exc:  # noqa: BLE001 -- a peer that fails is reported, not fatal
        print(f"ort-dynamic failed: {exc}", file=sys.stderr)

    class Reader(CalibrationDataReader):
        def __init__(self):
            name, x = next(iter(calibration.items()))
            self.batches = iter([{name: x[i:i + 32]} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self.batches, None)

    try:
        quantize_static(str(parent.onnx_path), str(folder / "ort-static.onnx"), Reader())
        out["ort-static"] = folder / "ort-static.onnx"
    except Exception as exc:  # noqa: BLE001
        print(f"ort-static failed: {exc}", file=sys.stderr)
    return out


def measure(parent, files: dict[str, Path], seconds: float) -> list[dict]:
    """One row per file: size, test accuracy, argmax changes vs float32, latency at batch 1 and 64."""
    from dlkit_quantize.select import time_rounds

    from dlkit.infer.evaluate import evaluation_data
    from dlkit.infer.session import Session

    data = evaluation_data(parent)
    sessions = {k: Session(p, "cpu", threads=1) for k, p in files.items()}
    name = sessions["float32"].inputs[0].name
    x_test = data.x_test.astype(np.float32)
    top = {k: s.session.run(["logits"], {name: x_test})[0].argmax(1) for k, s in sessions.items()}
    feeds = {b: {name: np.ascontiguousarray(np.resize(data.x_val.astype(np.float32), (b, *x_test.shape[1:])))}
             for b in (1, 64)}
    lat = time_rounds(sessions, feeds, seconds, reference="float32")
    base = {b: lat["float32"][b]["ms"] for b in (1, 64)}
    size0 = files["float32"].stat().st_size
    return [{"model": k, "size_ratio": files[k].stat().st_size / size0,
             "test_accuracy": float((top[k] == data.y_test).mean()),
             "argmax_changes": int((top[k] != top["float32"]).sum()), "test_samples": len(x_test),
             **{f"b{b}_ratio": lat[k][b]["ms"] / base[b] for b in (1, 64)},
             **{f"b{b}_spread": lat[k][b]["spread"] for b in (1, 64)}, **{f"b{b}_ms": lat[k][b]["ms"] for b in (1, 64)}}
            for k in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repo", help="model repository (default: temporary)")
    parser.add_argument("--measure-seconds", type=float, default=2.0, help="dlkit auto's timing budget")
    parser.add_argument("--seconds", type=float, default=3.0, help="the table's timing per batch size")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    from dlkit_quantize.measure import quality_check
    from dlkit_quantize.quantize import NoCandidateError, quantize

    from dlkit.infer.evaluate import evaluation_data
    from dlkit.infer.session import Session
    from dlkit.store.repository import ModelRepository

    tmp = None if args.repo else tempfile.TemporaryDirectory(prefix="bench-quantize-")
    repo = ModelRepository(args.repo or Path(tmp.name) / "models")
    results = {}
    for key in args.models.split(","):
        parent = trained(repo, key, args.epochs)
        for old in repo.versions(f"{parent.name}-int8"):
            shutil.rmtree(repo.root / f"{parent.name}-int8" / str(old))
        with tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:
            session = Session(parent.onnx_path, "cpu", threads=1)
            feeds, _ = quality_check(parent, evaluation_data(parent), repo, session).calibration_feeds(256)
            files = {"float32": parent.onnx_path, **peers(parent, Path(folder), feeds)}
            try:
                report = quantize(parent, repo, provider="cpu", threads=1, measure_seconds=args.measure_seconds,
                                  log=lambda msg: None)
                chosen = repo.resolve(f"{report['model']}:{report['version']}")
                files[f"dlkit ({report['chosen']})"] = chosen.onnx_path
            except NoCandidateError:
                print(f"{key}: dlkit auto kept nothing within its tolerance", file=sys.stderr)
            results[key] = {"params": parent.meta.get("params"), "rows": measure(parent, files, args.seconds)}
        print_rows(key, results[key])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def print_rows(key: str, result: dict) -> None:
    print(f"\n{key} ({result['params']:,} parameters)\n")
    print("| model | size | test accuracy | argmax changes | batch 1 | batch 64 |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['model']} | {r['size_ratio']:.2f}x | {r['test_accuracy']:.4f} | "
              f"{r['argmax_changes']}/{r['test_samples']} | {r['b1_ratio']:.2f}x ±{r['b1_spread']:.0%} | "
              f"{r['b64_ratio']:.2f}x ±{r['b64_spread']:.0%} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
