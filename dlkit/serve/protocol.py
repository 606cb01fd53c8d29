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

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..errors import InputError

# v2 datatype <-> numpy dtype. BYTES are numpy object arrays (of bytes in, str out of onnxruntime);
# BF16 is left out: numpy has no such type.
V2_TO_NUMPY = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype("uint8"), "UINT16": np.dtype("uint16"),
    "UINT32": np.dtype("uint32"), "UINT64": np.dtype("uint64"), "INT8": np.dtype("int8"),
    "INT16": np.dtype("int16"), "INT32": np.dtype("int32"), "INT64": np.dtype("int64"),
    "FP16": np.dtype("float16"), "FP32": np.dtype("float32"), "FP64": np.dtype("float64"),
}
ALL_DTYPES = {**V2_TO_NUMPY, "BYTES": np.dtype(object)}  # the numeric types, and strings
NUMPY_TO_V2 = {dtype.name: v2 for v2, dtype in ALL_DTYPES.items()}
RUNTIME_TO_V2 = {**NUMPY_TO_V2, "tensor(string)": "BYTES"}  # onnxruntime's name for string tensors
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
        return ALL_DTYPES[self.datatype]

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # Triton's classification extension: the top K as strings (0: off)


@dataclass
class InferRequest:
    """A validated request: its tensors, the batch size they share, and what to send back."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    batch: int


def spec_from_runtime(info) -> TensorSpec:
    """A :class:`TensorSpec` from a ``dlkit.infer.session.TensorInfo``."""
    v2 = RUNTIME_TO_V2.get(str(info.dtype))
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
        doc = orjson.loads(header)  # 3-5x faster than json on number lists; refuses NaN tokens (not JSON)
    except orjson.JSONDecodeError as exc:  # also: nesting beyond 1024, integers beyond 64 bits
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
                          results: dict[str, np.ndarray],
                          requested: list[RequestedOutput]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON + binary tensors when any were asked for."""
    outs = []
    blobs = []
    for want in requested:
        array = results[want.name]
        entry: dict[str, Any] = {"name": want.name, "datatype": NUMPY_TO_V2[array.dtype.name],
                                 "shape": list(array.shape)}
        if want.binary:
            data = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        elif array.dtype.kind == "O":
            from .strings import to_json

            entry["data"] = to_json(want.name, array)
        elif array.dtype.kind in "fc" and not np.isfinite(array).all():
            entry["data"] = json_numbers(array)
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()  # orjson writes numpy arrays natively
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = outs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(len(header))}


NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def json_numbers(array: np.ndarray) -> list:
    """A numeric tensor as a flat JSON list; NaN and infinities as the strings "NaN", "Infinity"
    and "-Infinity" (protobuf's JSON mapping), because JSON has no such numbers. Triton writes
    bare NaN/Infinity tokens, which strict parsers refuse; numpy reads these strings back
    (``np.array(data, dtype=np.float32)``, what tritonclient's ``as_numpy`` does)."""
    data = array.ravel().tolist()
    if array.dtype.kind == "f":
        flat = array.ravel()
        bad = np.flatnonzero(~np.isfinite(flat))
        for i in bad.tolist():
            v = data[i]
            data[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return data


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor's binary form: raw little-endian row-major data, or length-prefixed BYTES elements."""
    if array.dtype.kind == "O":
        from .strings import serialize

        return serialize(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


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
        raise ProtocolError(f"input {spec.name!r}: expected datatype {spec.datatype}, "
                            f"received {datatype[:40]!r}{known}")
    if len(shape) != len(spec.shape) or any(e != -1 and e != d for e, d in zip(spec.shape, shape)):
        raise ProtocolError(f"input {spec.name!r}: expected shape {list(spec.shape)} (-1: any size), "
                            f"received {shape}"[:300])


def _binary_tensor(name: str, spec: TensorSpec, shape: list[int], count: int, size: Any, raw: dict,
                   tail: memoryview, offset: int) -> np.ndarray:
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer, received {size!r}"[:300])
    if "data" in raw:
        raise ProtocolError(f"input {name!r}: has both 'data' and parameters.binary_data_size")
    if offset + size > len(tail):
        raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                            f"({len(tail) - offset} bytes left)")
    if spec.datatype == "BYTES":  # length-prefixed elements: their count is checked while reading
        from .strings import deserialize

        return deserialize(name, tail[offset:offset + size], count).reshape(shape)
    needed = count * spec.dtype.itemsize
    if size != needed:
        raise ProtocolError(f"input {name!r}: shape {shape} of {spec.datatype} needs {needed} bytes, "
                            f"binary_data_size is {size}")
    array = np.frombuffer(tail[offset:offset + size], dtype=spec.dtype.newbyteorder("<"))
    return array.astype(spec.dtype, copy=True).reshape(shape)  # own, aligned, native-order memory


def _json_tensor(name: str, spec: TensorSpec, shape: list[int], count: int, data: Any) -> np.ndarray:
    if data is None:
        raise ProtocolError(f"input {name!r}: no 'data' (nor parameters.binary_data_size)")
    if not isinstance(data, list):
        data = [data]
    if spec.datatype == "BYTES":
        from .strings import from_json

        return from_json(name, _flatten(data, len(shape)), count).reshape(shape)
    # A flat list's length is known before anything is built; nested lists are checked after
    # numpy has built them (their size is bounded by the body anyway).
    if data and not isinstance(data[0], list) and len(data) != count:
        raise ProtocolError(f"input {name!r}: shape {shape} declares {count} elements, data holds {len(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {name!r}: data is not a rectangular list of numbers") from None
    if array.dtype.kind == "U" and spec.dtype.kind == "f":
        array = _non_finite(name, spec.datatype, data, len(shape))
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


def _non_finite(name: str, datatype: str, data: list, rank: int) -> np.ndarray:
    """Float data holding the strings "NaN", "Infinity" or "-Infinity" (what responses use)."""
    flat = _flatten(data, rank)
    values = []
    for v in flat:
        if isinstance(v, str):
            if v not in NON_FINITE:
                raise ProtocolError(f"input {name!r}: {datatype} data expected, received non-numbers (the only "
                                    f"strings it may hold are \"NaN\", \"Infinity\" and \"-Infinity\"; "
                                    f"received {v[:40]!r})")
            v = NON_FINITE[v]
        elif type(v) not in (int, float):
            raise ProtocolError(f"input {name!r}: data is not a rectangular list of numbers")
        values.append(v)
    return np.array(values, dtype=np.float64)


def _flatten(data: list, depth: int) -> list:
    """A nested list of at most ``depth`` levels, flat (strings are leaves, not sequences)."""
    for _ in range(depth):
        if not any(isinstance(v, list) for v in data):
            break
        if not all(isinstance(v, list) for v in data):
            raise ProtocolError("data mixes lists and values at one level")
        data = [v for row in data for v in row]
    return data


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
        classification = params.get("classification", 0)
        if type(classification) is not int or classification < 0:
            raise ProtocolError(f"output {name!r}: parameters.classification must be a positive integer (the "
                                f"number of classes to return), received {classification!r}"[:300])
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError((f"output {name!r}: parameters.binary_data must be true or false, "
                                 f"received {binary!r}")[:300])
        chosen.append(RequestedOutput(name, binary, classification))
    return chosen
