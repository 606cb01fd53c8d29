"""The protocol parser and the dynamic batcher, directly, where a test must control timing."""

from __future__ import annotations

import asyncio
import json
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import digits  # noqa: E402

from dlkit.serve.batcher import DynamicBatcher, QueueFull  # noqa: E402
from dlkit.serve.protocol import ProtocolError, TensorSpec, encode_infer_response, parse_infer_request  # noqa: E402

X1 = digits(1)


# -- the protocol and the batcher, directly -------------------------------------------------------------
DYNAMIC = [TensorSpec("input", "FP32", (-1, -1, -1))]
OUT = [TensorSpec("y", "FP32", (-1,))]


@pytest.mark.parametrize("binary", [False, True])
def test_absurd_shape_is_refused_before_allocating(binary):
    shape = [10_000, 10_000, 10_000]  # 10^12 elements, every dimension allowed by the model
    if binary:
        header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                         "parameters": {"binary_data_size": 16}}]}).encode()
        body, length = header + bytes(16), str(len(header))
    else:
        body, length = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                               "data": [1.0, 2.0, 3.0, 4.0]}]}).encode(), None
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="1000000000000|needs 4000000000000 bytes"):
            parse_infer_request(body, length, DYNAMIC, OUT, max_batch_size=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_protocol_round_trip_of_every_numeric_datatype():
    from dlkit.serve.protocol import V2_TO_NUMPY

    for datatype, dtype in V2_TO_NUMPY.items():
        spec = [TensorSpec("x", datatype, (-1, 2))]
        values = np.array([[0, 1], [1, 0]], dtype=dtype)
        parsed = parse_infer_request(json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype,
                                                             "data": values.ravel().tolist()}]}).encode(),
                                     None, spec, spec, max_batch_size=4)
        assert parsed.inputs["x"].dtype == dtype and (parsed.inputs["x"] == values).all() and parsed.batch == 2
        body, headers = encode_infer_response("m", 1, None, {"x": values}, parsed.outputs)
        assert json.loads(body)["outputs"][0] == {"name": "x", "datatype": datatype, "shape": [2, 2],
                                                  "data": values.ravel().tolist()}


def test_protocol_fuzz_only_raises_protocol_errors():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    spec = [TensorSpec("input", "FP32", (-1, 2))]
    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5)
    keys = st.sampled_from(["name", "shape", "datatype", "data", "parameters", "binary_data_size", "inputs",
                            "outputs", "id", "binary_data", "binary_data_output"])
    values = scalars | st.lists(scalars | st.lists(scalars, max_size=3), max_size=4) | st.dictionaries(
        keys, scalars | st.lists(scalars, max_size=3), max_size=3)
    tensor = st.fixed_dictionaries({"name": st.sampled_from(["input", "x"]),
                                    "shape": st.lists(st.integers(-1, 5), max_size=3),
                                    "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "x"])},
                                   optional={"data": values, "parameters": values})
    bodies = st.fixed_dictionaries({}, optional={"inputs": st.lists(tensor, max_size=3) | values,
                                                "outputs": values, "id": values, "parameters": values})

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(bodies, st.binary(max_size=64), st.one_of(st.none(), st.integers(-3, 200).map(str)))
    def check(doc, tail, length):
        body = json.dumps(doc).encode()
        try:
            parse_infer_request(body + tail if length else body, length, spec, OUT, max_batch_size=3)
        except ProtocolError:
            pass

    check()


def _run_batcher(coroutine):
    return asyncio.run(coroutine)


def test_batcher_coalesces_and_a_bad_request_fails_alone():
    calls: list[int] = []
    gate = threading.Event()

    def run(feeds):
        gate.wait(30)
        x = feeds["x"]
        calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2}

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=8, max_queue_delay_ms=0, max_queue_size=16)
            batcher.start()
            first = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2), np.float32)}, 1))
            for _ in range(100):  # bounded: until the first batch is running (holding the gate)
                await asyncio.sleep(0)
                if batcher._busy:
                    break
            xs = [np.full((n, 2), v, np.float32) for n, v in ((2, 1.0), (1, -1.0), (3, 5.0))]
            rest = [asyncio.ensure_future(batcher.infer({"x": x}, len(x))) for x in xs]
            await asyncio.sleep(0)
            gate.set()
            results = await asyncio.gather(first, *rest, return_exceptions=True)
            await batcher.close()
            return xs, results

    xs, results = _run_batcher(main())
    assert calls[:2] == [1, 6]  # the first alone, then the three waiting ones as one batch
    assert (results[1][0]["y"] == xs[0] * 2).all() and (results[3][0]["y"] == xs[2] * 2).all()
    assert isinstance(results[2], ValueError)  # only the bad one failed, after its batch was split


def test_batcher_waits_only_for_requests_on_their_way():
    calls: list[int] = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return feeds

    async def spin_until(predicate) -> bool:
        for _ in range(200):  # bounded by loop iterations, not by time
            if predicate():
                return True
            await asyncio.sleep(0)
        return False

    async def main():
        with ThreadPoolExecutor(1) as pool:
            # A delay far longer than the test: if the batcher waited for it, nothing would run.
            batcher = DynamicBatcher(run, pool, max_batch_size=8, max_queue_delay_ms=600_000)
            batcher.start()
            x = {"x": np.zeros((1, 1), np.float32)}
            alone = asyncio.ensure_future(batcher.infer(x, 1))
            assert await spin_until(lambda: batcher._busy or alone.done())  # nobody arriving: no wait
            await alone
            with batcher.arriving():  # a body is being received: the batcher waits for it
                first = asyncio.ensure_future(batcher.infer(x, 1))
                assert not await spin_until(lambda: batcher._busy or first.done())
                second = asyncio.ensure_future(batcher.infer(x, 1))
                await asyncio.sleep(0)
            await asyncio.gather(first, second)
            await batcher.close()

    _run_batcher(main())
    assert calls == [1, 2]


def test_batcher_answers_queue_full_at_once():
    gate = threading.Event()

    def run(feeds):
        gate.wait(30)
        return feeds

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=4, max_queue_size=2)
            batcher.start()
            x = {"x": np.zeros((1, 1), np.float32)}
            running = asyncio.ensure_future(batcher.infer(x, 1))
            for _ in range(100):
                await asyncio.sleep(0)
                if batcher._busy:
                    break
            queued = [asyncio.ensure_future(batcher.infer(x, 1)) for _ in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="max-queue-size 2"):
                await batcher.infer(x, 1)
            gate.set()
            await asyncio.gather(running, *queued)
            await batcher.close()

    _run_batcher(main())

