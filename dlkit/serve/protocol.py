"""The Open Inference Protocol (KServe v2) REST bodies, with Triton's binary tensor data extension.

Parsing validates everything against the model's signature before a tensor is built: names,
datatypes, shapes and the batch size, and the element count a shape declares against the data
actually sent, so a tiny request that claims a huge shape costs nothing. Every error is a
:class:`ProtocolError` whose message names the input and the expected and received value.

Binary extension: a request whose JSON header is followed by raw tensors carries an
``Inference-Header-Content-Length`` header; inputs with ``parameters.binary_data_size`` take
their bytes from that tail, in order. Outputs are returned as binary when the request asks for
it (``parameters.binary_data_output`` for all, or ``binary_data`` per output).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

# v2 datatype <-> numpy dtype. BYTES (strings) and BF16 are left out: no dlkit model takes them.
V2_TO_NUMPY = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype("uint8"), "UINT16": np.dtype("uint16"),
    "UINT32": np.dtype("uint32"), "UINT64": np.dtype("uint64"), "INT8": np.dtype("int8"),
    "INT16": np.dtype("int16"), "INT32": np.dtype("int32"), "INT64": np.dtype("int64"),
    "FP16": np.dtype("float16"), "FP32": np.dtype("float32"), "FP64": np.dtype("float64"),
}
NUMPY_TO_V2 = {dtype.name: v2 for v2, dtype in V2_TO_NUMPY.items()}
KNOWN_DATATYPES = set(V2_TO_NUMPY) | {"BYTES", "BF16"}
# Which JSON number kinds (numpy dtype.kind of the parsed list) each target kind accepts.
ACCEPTS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


class ProtocolError(InputError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol describes it; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A validated request: its tensors, the batch size they share, and what to send back."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    batch: int


def spec_from_runtime(info) -> TensorSpec:
    """A :class:`TensorSpec` from a ``dlkit.infer.session.TensorInfo``."""
    v2 = NUMPY_TO_V2.get(str(info.dtype))
    if v2 is None:
        raise InputError(f"tensor {info.name!r} has type {info.dtype}, which dlkit serve does not support")
    return TensorSpec(info.name, v2, tuple(-1 if d is None else int(d) for d in info.shape))


def parse_infer_request(body: bytes, header_length: str | None, inputs: list[TensorSpec],
                        outputs: list[TensorSpec], max_batch_size: int | None = None) -> InferRequest:
    """Validate a v2 infer body (JSON, or JSON + binary tensors) against a model's signature.

    ``max_batch_size`` (None: the model has no batch dimension) caps the first dimension.
    """
    header, tail = _split(body, header_length)
    try:
        doc = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON in the request body: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed JSON in the request body: nested too deeply") from None
    except ValueError as exc:  # integers beyond Python's 4300-digit conversion limit
        raise ProtocolError(f"malformed JSON in the request body: {str(exc)[:200]}") from None
    return parse_infer_doc(doc, tail, inputs, outputs, max_batch_size)


def parse_infer_doc(doc: Any, tail: memoryview | bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    max_batch_size: int | None = None) -> InferRequest:
    """Validate a decoded v2 request (any transport) whose binary tensors, in order, fill ``tail``."""
    tail = memoryview(tail)
    if not isinstance(doc, dict):
        raise ProtocolError(f"the request body must be a JSON object, received {_kind(doc)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, received {_kind(request_id)}")
    params = _params(doc, "the request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(f"parameters.binary_data_output must be true or false, received {binary_default!r}")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise ProtocolError(f"'inputs' must be a list of tensors, received {_kind(raw_inputs)}")
    expected = {spec.name: spec for spec in inputs}
    tensors: dict[str, np.ndarray] = {}
    batch = None
    offset = 0
    for raw in raw_inputs:
        name, datatype, shape = _header(raw, expected, tensors)
        spec = expected[name]
        _check_signature(spec, datatype, shape)
        count = math.prod(shape)  # exact Python ints of a bounded rank: no overflow, no allocation
        if max_batch_size is not None:
            if batch is not None and shape[0] != batch:
                raise ProtocolError(f"input {name!r}: batch size {shape[0]} differs from the other inputs' {batch}")
            if shape[0] > max_batch_size:
                raise ProtocolError(
                    f"input {name!r}: batch size {shape[0]} exceeds the maximum batch size {max_batch_size} "
                    f"(received shape {shape})")
            batch = shape[0]
        in_params = _params(raw, f"input {name!r}")
        if "binary_data_size" in in_params:
            size = in_params["binary_data_size"]
            tensors[name] = _binary_tensor(name, spec, shape, count, size, raw, tail, offset)
            offset += size
        else:
            tensors[name] = _json_tensor(name, spec, shape, count, raw.get("data"))
    if offset != len(tail):
        raise ProtocolError(
            f"the binary section holds {len(tail)} bytes but the inputs' binary_data_size add up to {offset}")
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ProtocolError(f"missing input(s) {', '.join(map(repr, missing))}; the model takes "
                            + "; ".join(_describe(s) for s in inputs))
    return InferRequest(request_id, tensors, _outputs(doc, outputs, binary_default),
                        batch if batch is not None else 1)


def encode_infer_response(model_name: str, version: int, request_id: str | None,
                          results: dict[str, np.ndarray], requested: list[RequestedOutput]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON + binary tensors when any were asked for."""
    outs = []
    blobs = []
    for want in requested:
        array = results[want.name]
        entry: dict[str, Any] = {"name": want.name, "datatype": NUMPY_TO_V2[array.dtype.name],
                                 "shape": list(array.shape)}
        if want.binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = outs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(len(header))}


# -- helpers -----------------------------------------------------------------------------------------
def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length must be a byte count between 0 and the body "
                            f"size {len(body)}, received {header_length[:40]!r}")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object, received {_kind(params)}")
    return params


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name!r} ({spec.datatype} {list(spec.shape)})"


def _header(raw: Any, expected: dict[str, TensorSpec], seen: dict) -> tuple[str, str, list[int]]:
    """Name, datatype and shape of one request input, structurally checked."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"each input must be an object with name, shape, datatype; received {_kind(raw)}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"an input has no name (received name {name!r})")
    if name not in expected:
        raise ProtocolError(f"unexpected input {name!r}; the model takes "
                            + "; ".join(_describe(s) for s in expected.values()))
    if name in seen:
        raise ProtocolError(f"input {name!r} appears twice")
    shape = raw.get("shape")
    # Zero-sized tensors are refused here: onnxruntime's LSTM/GRU kernels call std::terminate on a
    # batch of 0, which would take the whole server down.
    if not isinstance(shape, list) or not all(type(d) is int and d >= 1 for d in shape):
        raise ProtocolError(f"input {name!r}: shape must be a list of positive integers (no zero-sized "
                            f"tensors), received {shape!r}"[:300])
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise ProtocolError(f"input {name!r}: datatype must be a string, received {datatype!r}"[:300])
    return name, datatype, shape


def _check_signature(spec: TensorSpec, datatype: str, shape: list[int]) -> None:
    if datatype != spec.datatype:
        known = "" if datatype in KNOWN_DATATYPES else " (not a v2 datatype)"
        raise ProtocolError(f"input {spec.name!r}: expected datatype {spec.datatype}, received {datatype[:40]!r}{known}")
    if len(shape) != len(spec.shape) or any(e != -1 and e != d for e, d in zip(spec.shape, shape)):
        raise ProtocolError(f"input {spec.name!r}: expected shape {list(spec.shape)} (-1: any size), "
                            f"received {shape}"[:300])


def _binary_tensor(name: str, spec: TensorSpec, shape: list[int], count: int, size: Any, raw: dict,
                   tail: memoryview, offset: int) -> np.ndarray:
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer, received {size!r}"[:300])
    if "data" in raw:
        raise ProtocolError(f"input {name!r}: has both 'data' and parameters.binary_data_size")
    needed = count * spec.dtype.itemsize
    if size != needed:
        raise ProtocolError(f"input {name!r}: shape {shape} of {spec.datatype} needs {needed} bytes, "
                            f"binary_data_size is {size}")
    if offset + size > len(tail):
        raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                            f"({len(tail) - offset} bytes left)")
    array = np.frombuffer(tail[offset:offset + size], dtype=spec.dtype.newbyteorder("<"))
    return array.astype(spec.dtype, copy=True).reshape(shape)  # own, aligned, native-order memory


def _json_tensor(name: str, spec: TensorSpec, shape: list[int], count: int, data: Any) -> np.ndarray:
    if data is None:
        raise ProtocolError(f"input {name!r}: no 'data' (nor parameters.binary_data_size)")
    if not isinstance(data, list):
        data = [data]
    # A flat list's length is known before anything is built; nested lists are checked after
    # numpy has built them (their size is bounded by the body anyway).
    if data and not isinstance(data[0], list) and len(data) != count:
        raise ProtocolError(f"input {name!r}: shape {shape} declares {count} elements, data holds {len(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {name!r}: data is not a rectangular list of numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: shape {shape} declares {count} elements, data holds {array.size}")
    if count and array.dtype.kind not in ACCEPTS[spec.dtype.kind]:
        got = {"b": "booleans", "f": "fractional numbers", "i": "integers"}.get(array.dtype.kind, "non-numbers")
        raise ProtocolError(f"input {name!r}: {spec.datatype} data expected, received {got}")
    if spec.dtype.kind in "iu" and count:
        info = np.iinfo(spec.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(f"input {name!r}: values out of range for {spec.datatype}")
    return array.astype(spec.dtype, copy=False).reshape(shape)


def _outputs(doc: dict, outputs: list[TensorSpec], binary_default: bool) -> list[RequestedOutput]:
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        return [RequestedOutput(spec.name, binary_default) for spec in outputs]
    if not isinstance(raw_outputs, list):
        raise ProtocolError(f"'outputs' must be a list, received {_kind(raw_outputs)}")
    names = [spec.name for spec in outputs]
    chosen: list[RequestedOutput] = []
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProtocolError("each requested output must be an object with a name")
        name = raw["name"]
        if name not in names:
            raise ProtocolError(f"unknown output {name[:100]!r}; the model has outputs {', '.join(map(repr, names))}")
        if any(c.name == name for c in chosen):
            raise ProtocolError(f"output {name!r} is requested twice")
        params = _params(raw, f"output {name!r}")
        if params.get("classification"):
            raise ProtocolError(f"output {name!r}: the classification extension is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name!r}: parameters.binary_data must be true or false, received {binary!r}"[:300])
        chosen.append(RequestedOutput(name, binary))
    return chosen
