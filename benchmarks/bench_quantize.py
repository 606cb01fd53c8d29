"""Peers table: ``dlkit quantize`` (auto) against onnxruntime's defaults on the same float ONNX files.

For each model (digits MLP, CNN and ResNet-style CNN at three widths each, LSTM, GRU; recipes from
models/*.toml, trained ``--epochs`` epochs, kept in ``--repo``): the float32 graph, onnxruntime's
``quantize_dynamic`` and ``quantize_static`` with their default arguments (what a user gets from
the documentation's first call; static calibrated on the same stratified 256 training samples dlkit
uses), Intel's NNCF (``nncf.quantize`` PTQ, and ``nncf.quantize_with_accuracy_control`` with a
0.005 absolute drop of validation accuracy, dlkit's ``--tolerance 0.5``) and
onnx-neural-compressor's static ``quantize`` with ``StaticQuantConfig`` defaults, on the same
calibration samples, and the model ``dlkit quantize`` chooses. All are measured afresh in one
harness: size on disk, validation and test accuracy, test samples whose top class differs from
float32's, latency at batch 1 and 64 with one onnxruntime thread, every model taking turns call
after call (the median of per-round minimums, with its relative spread). Ratios are to float32 in
the same run. A peer that fails on a model is a ``failed: <reason>`` row. After each table: dlkit
auto's speed-up over the fastest peer within the tolerance (peer time / dlkit time).

NNCF and onnx-neural-compressor are never dependencies of dlkit: they live in their own virtual
environment, ``benchmarks/.venv-peers`` (built on first use from
``quantize_peers_requirements.txt``, which needs PyPI), whose python runs
``benchmarks/quantize_peers.py`` to write their quantized files; timing and scoring happen here
in dlkit's environment like every other row. ``--no-peers`` (or an environment that cannot be
built, said on stderr) leaves those rows out and runs offline.

    python benchmarks/bench_quantize.py --repo /tmp/bq/models            # every model, 5 epochs
    python benchmarks/bench_quantize.py --repo /tmp/bq/models --models mlp,cnn-s --seconds 2
    python benchmarks/bench_quantize.py --repo /tmp/bq/models --no-peers  # onnxruntime and dlkit only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / "benchmarks" / ".venv-peers"
PEERS_REQUIREMENTS = ROOT / "benchmarks" / "quantize_peers_requirements.txt"
PEER_FILES = ("nncf-ptq", "nncf-ac", "inc")  # what quantize_peers.py writes, in table order
TOLERANCE = 0.5  # validation-accuracy points: dlkit's default --tolerance, and NNCF AC's max_drop x100
MODELS = {  # table name -> (recipe, model name, model overrides)
    "mlp": ("mlp.toml", "mlp-digits", {}),
    "cnn-s": ("cnn.toml", "cnn-digits-s", {"channels": [8, 16], "hidden": 32}),
    "cnn-m": ("cnn.toml", "cnn-digits", {}),
    "cnn-l": ("cnn.toml", "cnn-digits-l", {"channels": [96, 192], "hidden": 256}),
    # ResNet-style: the same widths with basic blocks and shortcuts (residual = true)
    "res-s": ("cnn.toml", "res-digits-s", {"channels": [8, 16], "hidden": 32, "residual": True}),
    "res-m": ("cnn.toml", "res-digits", {"residual": True}),
    "res-l": ("cnn.toml", "res-digits-l", {"channels": [96, 192], "hidden": 256, "residual": True}),
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


def peer_python(venv: Path) -> Path | None:
    """The peer environment's python, built from quantize_peers_requirements.txt on first use
    (rebuilt when that file changes); None, with one line on stderr, when it cannot be built."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = hashlib.sha256(PEERS_REQUIREMENTS.read_bytes()).hexdigest()
    try:
        if not (python.exists() and stamp.exists() and stamp.read_text().strip() == wanted):
            print(f"peers: building {venv} from {PEERS_REQUIREMENTS.name} (once; needs PyPI)", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(PEERS_REQUIREMENTS)],
                           check=True, timeout=1800)
            stamp.write_text(wanted + "\n")
        subprocess.run([str(python), "-c", "import nncf, onnx_neural_compressor"], check=True,
                       capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"peers: skipped, the peer environment {venv} could not be built or imported ({exc}); "
              "NNCF and onnx-neural-compressor rows are left out (--no-peers to skip silently)", file=sys.stderr)
        return None
    return python


def nncf_inc(python: Path, parent, data, folder: Path, calibration: dict, timeout: float) -> tuple[dict, dict]:
    """Run quantize_peers.py in the peer environment on the float file: ({name: path} written,
    {name: one-line reason} for the peers that failed; NNCF AC's kept-float nodes in the second
    dict under ``"nncf-ac kept float"``)."""
    _, x = next(iter(calibration.items()))
    np.save(folder / "calibration.npy", x)
    np.save(folder / "x_val.npy", data.x_val.astype(np.float32))
    np.save(folder / "y_val.npy", np.asarray(data.y_val, dtype=np.int64))
    out = folder / "peers"
    cmd = [str(python), str(ROOT / "benchmarks" / "quantize_peers.py"), "--model", str(parent.onnx_path),
           "--calibration", str(folder / "calibration.npy"), "--x-val", str(folder / "x_val.npy"),
           "--y-val", str(folder / "y_val.npy"), "--out", str(out), "--max-drop", str(TOLERANCE / 100)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        report = json.loads((out / "peers.json").read_text())
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        reason = f"quantize_peers.py did not finish: {' '.join(str(exc).split())[:200]}"
        return {}, dict.fromkeys(PEER_FILES, reason)
    finally:
        print(f"peers: NNCF and INC quantized in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    files, info = {}, {}
    for name in PEER_FILES:
        entry = report.get(name, {"error": "quantize_peers.py wrote no entry"})
        if "error" in entry:
            info[name] = entry["error"]
        else:
            files[name] = Path(entry["file"])
        if name == "nncf-ac" and "kept_float" in entry:
            info["nncf-ac kept float"] = entry.get("reverted") or "nothing reverted", entry["kept_float"]
    return files, info


def measure(parent, files: dict[str, Path], seconds: float, threads: int = 1) -> list[dict]:
    """One row per file: size, test accuracy, argmax changes vs float32, latency at batch 1 and 64."""
    from dlkit_quantize.select import time_rounds

    from dlkit.infer.evaluate import evaluation_data
    from dlkit.infer.session import Session

    data = evaluation_data(parent)
    sessions = {k: Session(p, "cpu", threads=threads) for k, p in files.items()}
    name = sessions["float32"].inputs[0].name
    x_test = data.x_test.astype(np.float32)
    top = {k: s.session.run(["logits"], {name: x_test})[0].argmax(1) for k, s in sessions.items()}
    val = {k: float((s.session.run(["logits"], {name: data.x_val.astype(np.float32)})[0].argmax(1)
                     == data.y_val).mean()) for k, s in sessions.items()}
    feeds = {b: {name: np.ascontiguousarray(np.resize(data.x_val.astype(np.float32), (b, *x_test.shape[1:])))}
             for b in (1, 64)}
    lat = time_rounds(sessions, feeds, seconds, reference="float32")
    base = {b: lat["float32"][b]["ms"] for b in (1, 64)}
    size0 = files["float32"].stat().st_size
    return [{"model": k, "size_ratio": files[k].stat().st_size / size0,
             "val_accuracy": val[k], "test_accuracy": float((top[k] == data.y_test).mean()),
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
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads, for dlkit auto's measurement and the table's")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out NNCF and onnx-neural-compressor (no peer environment, works offline)")
    parser.add_argument("--peers-venv", type=Path, default=PEERS_VENV, help="the peer environment")
    parser.add_argument("--peers-timeout", type=float, default=1800, help="seconds for the peers per model")
    args = parser.parse_args()

    from dlkit_quantize.measure import quality_check
    from dlkit_quantize.quantize import NoCandidateError, quantize

    from dlkit.infer.evaluate import evaluation_data
    from dlkit.infer.session import Session
    from dlkit.store.repository import ModelRepository

    tmp = None if args.repo else tempfile.TemporaryDirectory(prefix="bench-quantize-")
    repo = ModelRepository(args.repo or Path(tmp.name) / "models")
    python = None if args.no_peers else peer_python(args.peers_venv)
    results = {}
    for key in args.models.split(","):
        parent = trained(repo, key, args.epochs)
        for old in repo.versions(f"{parent.name}-int8"):
            shutil.rmtree(repo.root / f"{parent.name}-int8" / str(old))
        with tempfile.TemporaryDirectory(prefix="bench-peers-") as folder:
            session = Session(parent.onnx_path, "cpu", threads=args.threads)
            feeds, _ = quality_check(parent, evaluation_data(parent), repo, session).calibration_feeds(256)
            files = {"float32": parent.onnx_path, **peers(parent, Path(folder), feeds)}
            info: dict = {}
            if python is not None:
                peer_files, info = nncf_inc(python, parent, evaluation_data(parent), Path(folder), feeds,
                                            args.peers_timeout)
                for name, path in peer_files.items():  # a file onnxruntime cannot load is a failed row too
                    try:
                        Session(path, "cpu", threads=1)
                        files[name] = path
                    except Exception as exc:  # noqa: BLE001
                        info[name] = f"onnxruntime cannot load it: {' '.join(str(exc).split())[:200]}"
            try:
                report = quantize(parent, repo, provider="cpu", threads=args.threads,
                                  measure_seconds=args.measure_seconds,
                                  log=lambda msg: None)
                chosen = repo.resolve(f"{report['model']}:{report['version']}")
                files[f"dlkit ({report['chosen']})"] = chosen.onnx_path
            except NoCandidateError:
                print(f"{key}: dlkit auto kept nothing within its tolerance", file=sys.stderr)
            rows = measure(parent, files, args.seconds, args.threads)
            rows += [{"model": k, "failed": info[k]} for k in PEER_FILES if k in info]
            results[key] = {"params": parent.meta.get("params"), "rows": rows,
                            "nncf_ac_kept_float": info.get("nncf-ac kept float"),
                            "verdict": verdict(rows)}
        print_rows(key, results[key])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def verdict(rows: list[dict]) -> dict | None:
    """dlkit auto against the fastest peer within tolerance (validation accuracy at most
    TOLERANCE points below float32's; fastest = lowest geometric mean of the batch 1 and 64
    ratios, dlkit's default ``served`` objective): ``speedup_bB`` = the peer's latency / dlkit's."""
    measured = [r for r in rows if "failed" not in r]
    base = next(r for r in measured if r["model"] == "float32")["val_accuracy"]
    ok = [r for r in measured if (base - r["val_accuracy"]) * 100 <= TOLERANCE + 1e-9]
    dlkit = next((r for r in measured if r["model"].startswith("dlkit")), None)
    peers = [r for r in ok if r["model"] != "float32" and not r["model"].startswith("dlkit")]
    if dlkit is None or not peers:
        return None

    def served(r):
        return float(np.sqrt(r["b1_ratio"] * r["b64_ratio"]))

    best = min(peers, key=served)
    fastest = min(ok, key=served)
    speedup = served(best) / served(dlkit)
    noise = float(np.mean([best[f"b{b}_spread"] + dlkit[f"b{b}_spread"] for b in (1, 64)]))
    target = ("met" if fastest is dlkit and speedup >= 1.1 else
              "fastest, under 1.1x" if fastest is dlkit else "not met")
    return {"best_peer": best["model"], "dlkit_within_tolerance": dlkit in ok,
            "fastest_within_tolerance": fastest["model"],
            **{f"speedup_b{b}": best[f"b{b}_ms"] / dlkit[f"b{b}_ms"] for b in (1, 64)},
            "speedup_served": speedup, "noise": noise, "tie": abs(speedup - 1) <= noise, "target": target}


def print_rows(key: str, result: dict) -> None:
    print(f"\n{key} ({result['params']:,} parameters)\n")
    print("| model | size | val accuracy | test accuracy | argmax changes | batch 1 | batch 64 |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if "failed" in r:
            print(f"| {r['model']} | failed: {r['failed']} | | | | | |")
            continue
        print(f"| {r['model']} | {r['size_ratio']:.2f}x | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
              f"{r['argmax_changes']}/{r['test_samples']} | {r['b1_ratio']:.2f}x ±{r['b1_spread']:.0%} | "
              f"{r['b64_ratio']:.2f}x ±{r['b64_spread']:.0%} |")
    kept = result.get("nncf_ac_kept_float")
    if kept:
        print(f"\nnncf-ac: {kept[0]}{': ' + ', '.join(kept[1]) if kept[1] else ''}")
    v = result.get("verdict")
    if v:
        print(f"\n{key}: dlkit auto vs the best peer within {TOLERANCE} points ({v['best_peer']}): "
              f"{v['speedup_b1']:.2f}x at batch 1, {v['speedup_b64']:.2f}x at batch 64, {v['speedup_served']:.2f}x "
              f"served (peer time / dlkit time; {'a tie, within' if v['tie'] else 'beyond'} the combined spread "
              f"±{v['noise']:.0%}); fastest within tolerance: {v['fastest_within_tolerance']}"
              f"{'' if v['dlkit_within_tolerance'] else ' (dlkit itself is outside the tolerance on this run)'}; "
              f"target: {v['target']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
