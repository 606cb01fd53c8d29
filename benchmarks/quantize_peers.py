"""Quantize one float ONNX file with Intel's NNCF and onnx-neural-compressor (INC): the peers' side.

Run with the peer environment's python (``benchmarks/.venv-peers``, made by bench_quantize.py
from ``quantize_peers_requirements.txt``); it imports neither dlkit nor torch and only writes
files, which bench_quantize.py then times and scores in dlkit's environment beside every other
row. Each peer is called the way its documentation's first example calls it, on the same
calibration samples dlkit uses:

- ``nncf-ptq.onnx``: ``nncf.quantize(model, nncf.Dataset(samples))``, one sample per item
  (NNCF's default subset of 300 items takes all 256).
- ``nncf-ac.onnx``: ``nncf.quantize_with_accuracy_control(model, calibration, validation,
  validation_fn, max_drop=...)``, validation accuracy (top class of ``logits``) with an absolute
  ``--max-drop`` (0.005, dlkit's ``--tolerance 0.5`` points); the nodes it reverted to float are
  read from NNCF's log.
- ``inc.onnx``: ``onnx_neural_compressor.quantization.quantize(model, out,
  config.StaticQuantConfig(calibration_data_reader=reader))``, the reader yielding batches of
  32 (INC calibrates on its first 100 reader items: all 256 samples).

    benchmarks/.venv-peers/bin/python benchmarks/quantize_peers.py --model float.onnx \\
        --calibration calib.npy --x-val x_val.npy --y-val y_val.npy --out folder

Writes ``peers.json``: per peer ``{"file", "seconds", "kept_float"}`` or ``{"error"}`` (one line).
A peer that fails does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def output_index(model) -> int:
    names = [o.name for o in model.graph.output]
    return names.index("logits") if "logits" in names else 0


def nncf_ptq(model, calibration: np.ndarray, input_name: str):
    import nncf

    dataset = nncf.Dataset(list(calibration), lambda x: {input_name: x[None]})
    return nncf.quantize(model, dataset)


class _Reverted(logging.Handler):
    """What NNCF's accuracy control says it did (its log is the only place it says so)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.total, self.summary, self.nodes, self.removed_all, self.missed = None, "", [], False, False

    def emit(self, record):
        text = record.getMessage()
        if text.startswith("Total number of quantized operations in the model:"):
            self.total = text.rsplit(":", 1)[1].strip()
        elif "were reverted back to the floating-point precision" in text:
            first, *rest = text.splitlines()
            self.summary = first.strip().rstrip(":")
            self.nodes = [line.strip() for line in rest if line.strip()]
        elif text.startswith("All layers have been checked"):
            self.removed_all = True
        elif text.startswith("The algorithm could not achieve the required accuracy drop"):
            self.missed = True

    def describe(self) -> str:
        if self.removed_all:
            return f"all {self.total} quantized operations reverted to float, max_drop still not reached"
        text = self.summary or "nothing reverted to float"
        return text + ("; max_drop not reached" if self.missed else "")


def nncf_ac(model, calibration: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, input_name: str,
            max_drop: float):
    import nncf
    import onnxruntime as ort

    out = output_index(model)

    def validate(candidate, items) -> float:
        session = ort.InferenceSession(candidate.SerializeToString(), providers=["CPUExecutionProvider"])
        hits = [int(session.run(None, {input_name: x[None]})[out].argmax(1)[0] == label) for x, label in items]
        return float(np.mean(hits))

    calibration_set = nncf.Dataset(list(calibration), lambda x: {input_name: x[None]})
    validation_set = nncf.Dataset(list(zip(x_val, y_val)), lambda item: ({input_name: item[0][None]}, item[1]))
    # NNCF hands the validation function the untransformed items, (sample, label).
    handler = _Reverted()
    logger = logging.getLogger("nncf")
    logger.addHandler(handler)
    try:
        quantized = nncf.quantize_with_accuracy_control(model, calibration_set, validation_set, validate,
                                                        max_drop=max_drop)
    finally:
        logger.removeHandler(handler)
    return quantized, handler


def inline(path: Path) -> None:
    """Rewrite ``path`` as one self-contained file: INC saves initializers over 1 KB to a side
    file (``inc.onnx_data``), which the size column would otherwise miss."""
    import onnx

    sides = {entry.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
             if t.data_location == onnx.TensorProto.EXTERNAL for entry in t.external_data if entry.key == "location"}
    if sides:
        model = onnx.load(str(path))
        onnx.save(model, str(path))
        for side in sides:
            (path.parent / side).unlink(missing_ok=True)


def inc_static(model_path: Path, out_path: Path, calibration: np.ndarray, input_name: str) -> None:
    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config, quantize

    class Reader(data_reader.CalibrationDataReader):
        def __init__(self):
            self.batches = [{input_name: calibration[i:i + 32]} for i in range(0, len(calibration), 32)]
            self.rewind()

        def get_next(self):
            return next(self.items, None)

        def rewind(self):
            self.items = iter(self.batches)

    quantize(str(model_path), str(out_path), config.StaticQuantConfig(calibration_data_reader=Reader()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="the float32 ONNX file")
    parser.add_argument("--calibration", required=True, type=Path, help=".npy of calibration inputs")
    parser.add_argument("--x-val", required=True, type=Path, help=".npy of validation inputs")
    parser.add_argument("--y-val", required=True, type=Path, help=".npy of validation labels")
    parser.add_argument("--out", required=True, type=Path, help="folder for the quantized files and peers.json")
    parser.add_argument("--max-drop", type=float, default=0.005, help="accuracy control: absolute accuracy drop")
    parser.add_argument("--peers", default="nncf-ptq,nncf-ac,inc")
    args = parser.parse_args()

    import onnx

    args.out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(args.model))
    input_name = model.graph.input[0].name
    calibration = np.load(args.calibration).astype(np.float32)
    x_val, y_val = np.load(args.x_val).astype(np.float32), np.load(args.y_val).astype(np.int64)
    report: dict[str, dict] = {}
    for peer in args.peers.split(","):
        path = args.out / f"{peer}.onnx"
        started = time.perf_counter()
        entry: dict = {}
        try:
            if peer == "nncf-ptq":
                onnx.save(nncf_ptq(model, calibration, input_name), str(path))
            elif peer == "nncf-ac":
                quantized, reverted = nncf_ac(model, calibration, x_val, y_val, input_name, args.max_drop)
                onnx.save(quantized, str(path))
                entry["kept_float"] = reverted.nodes
                entry["reverted"] = reverted.describe()
            elif peer == "inc":
                inc_static(args.model, path, calibration, input_name)
                inline(path)
            else:
                raise ValueError(f"unknown peer {peer}")
            entry |= {"file": str(path), "seconds": round(time.perf_counter() - started, 1)}
        except Exception as exc:  # noqa: BLE001 -- a peer that fails is reported, not fatal
            traceback.print_exc(file=sys.stderr)
            entry = {"error": one_line(exc)}
        report[peer] = entry
        print(f"{peer}: {entry.get('error') or 'wrote ' + path.name}", file=sys.stderr)
    (args.out / "peers.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
