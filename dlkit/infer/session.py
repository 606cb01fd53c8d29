"""onnxruntime sessions: execution-provider choice with fallback, and metadata without torch.

Used by predict, bench, evaluate --runtime onnx, quantize and serve. Imports neither torch nor
sklearn.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlkit.errors import DlkitError, InputError
from dlkit.infer.onnx_files import check_external_data

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
PREFERENCE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
OPT_LEVELS = ("disable", "basic", "extended", "all")

ORT_TO_NUMPY = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool", "tensor(int16)": "int16",
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(requested: str = "auto", strict: bool = False) -> list[str]:
    """The provider list to hand onnxruntime: the requested one (or the best for ``auto``) + CPU.

    An unavailable provider warns and falls back to CPU, or is an InputError when ``strict``.
    """
    available = available_providers()
    if requested == "auto":
        best = next(p for p in PREFERENCE + available if p in available)
        chosen = best
    else:
        chosen = ALIASES.get(requested.lower(), requested)
        if chosen not in available:
            msg = f"provider {requested!r} is not available here (available: {', '.join(available)})"
            if strict:
                raise InputError(msg)
            print(f"dlkit: warning: {msg}; falling back to CPUExecutionProvider", file=sys.stderr)
            chosen = "CPUExecutionProvider"
    # Nodes a provider cannot run fall to the next one: TensorRT -> CUDA -> CPU.
    after = PREFERENCE[PREFERENCE.index(chosen) + 1:] if chosen in PREFERENCE else ["CPUExecutionProvider"]
    return [chosen] + [p for p in after if p in available or p == "CPUExecutionProvider"]


def providers_report() -> dict:
    """What ``dlkit providers`` shows: the onnxruntime build, its providers and ``auto``'s choice."""
    import onnxruntime as ort

    available = available_providers()
    return {"onnxruntime": ort.__version__, "device": ort.get_device(), "available": available,
            "auto": choose_providers("auto"), "preference": PREFERENCE,
            "aliases": {k: v for k, v in ALIASES.items() if k != "trt"}}


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, shape (None or a name for dynamic axes), numpy dtype."""

    name: str
    shape: tuple
    dtype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class Session:
    """An onnxruntime InferenceSession with dlkit's provider choice and metadata."""

    def __init__(self, path: str | Path, provider: str = "auto", *, strict: bool = False,
                 threads: int | None = None, optimization: str = "all"):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such ONNX file (run `dlkit export onnx` first)")
        if optimization not in OPT_LEVELS:
            raise InputError(f"graph optimization must be one of {', '.join(OPT_LEVELS)}, got {optimization!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        providers = choose_providers(provider, strict)
        check_external_data(self.path)  # before onnxruntime reads a byte of it
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise InputError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:300]})") from None
        self.providers = self.session.get_providers()
        if strict and self.providers[0] != providers[0]:
            # onnxruntime drops a provider whose libraries fail to load (CUDA without cuDNN...)
            # with only a log line: --strict-provider means the user wants to know.
            raise DlkitError(f"provider {provider!r} ({providers[0]}) failed to start; onnxruntime uses "
                             f"{', '.join(self.providers)}")
        self.inputs = [_info(i) for i in self.session.get_inputs()]
        self.outputs = [_info(o) for o in self.session.get_outputs()]
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, Any]:
        """Run the graph; returns ``{output name: array}``."""
        names = outputs or [o.name for o in self.outputs]
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:
            raise DlkitError(f"onnxruntime failed on {self.path.name}: {str(exc).splitlines()[0][:300]}") from None
        return dict(zip(names, values))


def _info(arg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorInfo(arg.name, shape, ORT_TO_NUMPY.get(arg.type, arg.type))


def parse_metadata(props: dict[str, str], source: str = "ONNX metadata") -> dict[str, Any]:
    """ONNX metadata_props values are strings; dlkit stores JSON in them.

    A value that is not JSON stays a string (other tools write plain text); JSON nested
    thousands deep or holding a 4301+ digit integer is hostile and an InputError.
    """
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
        except RecursionError:
            raise InputError(f"{source}: metadata {key[:80]!r} is nested too deeply") from None
        except ValueError as exc:  # int()'s digit limit
            raise InputError(f"{source}: metadata {key[:80]!r} is not usable ({str(exc)[:100]})") from None
    return out
