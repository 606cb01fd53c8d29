"""Instance groups: N copies of a model run batches in parallel (--instances, config.pbtxt's
instance_group), shown in the configuration, with statistics that still add up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import ServerProcess, close, digits, free_port

from dlkit.errors import InputError
from dlkit.serve.batcher import DynamicBatcher
from dlkit.serve.pbtxt import configured_instances

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")


def test_two_instances_run_two_batches_at_once():
    # Each run waits at a barrier of two: it passes only if two batches run at the same time,
    # which one instance never does (the barrier then breaks after its generous timeout).
    barrier = threading.Barrier(2, timeout=60)
    used: list[int] = []

    def instance(number):
        def run(feeds):
            used.append(number)
            barrier.wait()
            return {"y": feeds["x"] + number}
        return run

    async def main():
        with ThreadPoolExecutor(4) as pool:
            batcher = DynamicBatcher([instance(0), instance(1)], pool, max_batch_size=1, max_queue_delay_ms=0)
            batcher.start()
            x = {"x": np.zeros((1, 1), np.float32)}
            results = await asyncio.gather(*(batcher.infer(x, 1) for _ in range(4)))
            await batcher.close()
            return results

    results = asyncio.run(main())
    assert sorted(used) == [0, 0, 1, 1]  # both instances ran, each twice
    assert sorted(float(r["y"][0, 0]) for r, _ in results) == [0, 0, 1, 1]


@pytest.mark.parametrize("text, count", [
    ('name: "m"\nplatform: "onnxruntime_onnx"\n', None),
    ("instance_group [ { count: 2, kind: KIND_CPU } ]", 2),
    ("instance_group [ { kind: KIND_CPU } ]", 1),  # Triton's default count
    ("instance_group [ { count: 2 }, { count: 3 kind: KIND_CPU } ]", 5),
    ("instance_group { count: 2 }\ninstance_group { count: 1 }", 3),
    ("# instance_group [ { count: 9 } ]\ninstance_group: [{count:4}]", 4),
])
def test_instance_group_is_read_as_triton_writes_it(tmp_path, text, count):
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    assert configured_instances(path) == count


@pytest.mark.parametrize("text, fault", [
    ("instance_group [ { count: 0 } ]", "'0'"),
    ("instance_group [ { count: two } ]", "'two'"),
    ("instance_group [ { count: 65 } ]", "'65'"),
    ("instance_group [ { count: 2 }", "unbalanced"),
])
def test_a_bad_instance_group_names_the_file_and_value(tmp_path, text, fault):
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    with pytest.raises(InputError, match=fault) as info:
        configured_instances(path)
    assert str(path) in str(info.value)


def _group(client, name):
    return client.get_model_config(name)["instance_group"]


def test_instances_serve_in_parallel_and_statistics_add_up(exported_repo, offline):
    port = free_port()
    srv = ServerProcess(exported_repo, "--models", "cnn-digits", "--instances", "2", "--grpc-port", str(port))
    try:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}", concurrency=16)
        assert _group(http, "cnn-digits") == [{"name": "cnn-digits", "count": 2, "kind": "KIND_CPU"}]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert grpc.get_model_config("cnn-digits", as_json=True)["config"]["instance_group"][0]["count"] == 2

        xs = [digits(1 + i % 3, seed=i) for i in range(48)]
        inputs = []
        for x in xs:
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            inputs.append([tensor])
        pending = [http.async_infer("cnn-digits", t) for t in inputs]
        for x, p in zip(xs, pending):
            close(p.get_result(timeout=120).as_numpy("probabilities"), offline("cnn-digits", x)["probabilities"])

        s = http.get_inference_statistics("cnn-digits")["model_stats"][0]
        assert s["inference_count"] == sum(len(x) for x in xs)
        assert s["inference_stats"]["success"]["count"] == len(xs)
        assert s["inference_stats"]["compute_infer"]["count"] == s["execution_count"]
        assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"]
        assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in s["batch_stats"]) == s["inference_count"]
    finally:
        assert srv.stop() == 0


def test_config_pbtxt_instance_group_is_honoured_unless_instances_is_given(exported):
    config = exported.root / "mlp-digits" / "config.pbtxt"
    config.write_text(config.read_text() + "instance_group [ { count: 3, kind: KIND_CPU } ]\n")
    for args, count in (((), 3), (("--instances", "1"), 1)):
        srv = ServerProcess(exported.root, "--models", "mlp-digits", *args)
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")
            assert _group(client, "mlp-digits")[0]["count"] == count
            x = digits(2)
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            assert client.infer("mlp-digits", [tensor]).as_numpy("probabilities").shape == (2, 10)
        finally:
            assert srv.stop() == 0


def test_a_bad_count_in_config_pbtxt_is_one_line_and_exit_2(exported):
    config = exported.root / "mlp-digits" / "config.pbtxt"
    config.write_text(config.read_text() + "instance_group [ { count: 0 } ]\n")
    proc = subprocess.run([sys.executable, "-m", "dlkit", "serve", "--repo", str(exported.root), "--port", "0",
                           "--grpc-port", "0", "--models", "mlp-digits"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(config) in proc.stderr and "instance_group count" in proc.stderr


def test_instances_is_checked(exported):
    proc = subprocess.run([sys.executable, "-m", "dlkit", "serve", "--repo", str(exported.root), "--instances", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--instances" in proc.stderr and "Traceback" not in proc.stderr
