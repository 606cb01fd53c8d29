"""BYTES tensors (strings) as the protocol carries them, and Triton's classification extension.

Binary form (Triton's, for REST's binary extension and gRPC's raw contents): every element is a
4-byte little-endian length followed by that many bytes, row-major. JSON form: a list of
strings (UTF-8). In memory a BYTES tensor is a numpy object array of ``str``: onnxruntime's
string tensors hold text (given ``bytes`` it would feed their ``repr``), so inputs must be UTF-8.
"""

from __future__ import annotations

import struct

import numpy as np

from .protocol import ProtocolError

_LENGTH = struct.Struct("<I")


def _as_bytes(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def serialize(array: np.ndarray) -> bytes:
    """The binary form of a BYTES tensor."""
    parts = []
    for value in array.ravel():
        data = _as_bytes(value)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize(name: str, buffer: memoryview, count: int) -> np.ndarray:
    """``count`` elements from their binary form (an error names the input if it is malformed)."""
    values = []
    offset = 0
    end = len(buffer)
    for _ in range(count):
        if offset + 4 > end:
            raise ProtocolError(f"input {name!r}: the BYTES data ends inside element {len(values)}'s length")
        (size,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + size > end:
            raise ProtocolError(f"input {name!r}: BYTES element {len(values)} declares {size} bytes, "
                                f"{end - offset} are left")
        values.append(_text(name, bytes(buffer[offset:offset + size]), len(values)))
        offset += size
    if offset != end:
        raise ProtocolError(f"input {name!r}: {end - offset} bytes left over after {count} BYTES elements")
    out = np.empty(count, dtype=object)
    out[:] = values
    return out


def _text(name: str, data: bytes, index: int) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"input {name!r}: BYTES element {index} is not UTF-8 text (onnxruntime's string "
                            "tensors hold text)") from None


def to_json(name: str, array: np.ndarray) -> list[str]:
    """A BYTES output as JSON strings; bytes that are not UTF-8 must travel binary."""
    try:
        return [v if isinstance(v, str) else bytes(v).decode() for v in array.ravel()]
    except UnicodeDecodeError:
        raise ProtocolError(f"output {name!r} holds bytes that are not UTF-8 text: request it with "
                            "parameters.binary_data true") from None


def from_json(name: str, data: list, count: int) -> np.ndarray:
    """A BYTES input from a JSON list of strings (or of bytes: gRPC's typed contents)."""
    if len(data) != count or not all(isinstance(v, (str, bytes)) for v in data):
        raise ProtocolError(f"input {name!r}: BYTES data must be a list of {count} strings")
    out = np.empty(count, dtype=object)
    out[:] = [v if isinstance(v, str) else _text(name, v, i) for i, v in enumerate(data)]
    return out


def classify(array: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """Triton's classification extension: the ``k`` highest scores of each row as
    ``"score:index"`` or ``"score:index:label"`` strings, best first (shape [batch, k] or [k])."""
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim else array.reshape(1, -1)
    rows = rows.astype(np.float64, copy=False)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for r, indices in enumerate(order):
        for c, i in enumerate(indices):
            text = f"{rows[r, i]:f}:{i}"  # std::to_string's six decimals, as Triton writes them
            if labels is not None and i < len(labels):
                text += f":{labels[i]}"
            out[r, c] = text
    return out if batched and array.ndim else out.reshape(k)
