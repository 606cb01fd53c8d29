"""`dlkit import onnx` and `dlkit import torch`: models dlkit did not train, through predict,
bench, serve (unmodified tritonclient) and quantize; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx_graphs as graphs
import pytest

from dlkit.testing import run_cli

STARTUP_SECONDS = 120


def ort_run(path: Path, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def predicted(repo, ref: str, path: Path) -> dict:
    out = run_cli("predict", ref, path, "--repo", repo.root, "--json").json()
    (entry,) = out["outputs"]
    return {k: np.asarray(v) for k, v in entry["outputs"].items()}


# -- import onnx ------------------------------------------------------------------------------------
def test_classifier_import_meta_config_predict_bench(repo, tmp_path):
    model = graphs.classifier(tmp_path / "clf.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    report = run_cli("import", "onnx", model, "--name", "clf", "--labels", labels, "--repo", repo.root, "--json").json()
    assert (report["model"], report["version"], report["task"]) == ("clf", 1, "classification")
    meta = repo.resolve("clf").meta
    assert meta["schema_version"] == 1 and meta["labels"] == ["cat", "dog", "bird"] and meta["num_classes"] == 3
    assert meta["method"] == "import" and meta["parent"] is None and meta["source"]["kind"] == "onnx"
    record = meta["onnx"]
    stored = repo.resolve("clf").onnx_path.read_bytes()
    assert record["bytes"] == len(stored) and record["opset"] == 13 and len(record["sha256"]) == 64
    assert record["inputs"] == [{"name": "x", "shape": [None, 4], "dtype": "float32"}]
    assert record["outputs"] == [{"name": "logits", "shape": [None, 3], "dtype": "float32"}]
    config = (repo.root / "clf" / "config.pbtxt").read_text()
    assert "max_batch_size: 64" in config and "dims: [ 4 ]" in config

    x = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = run_cli("predict", "clf", tmp_path / "x.npy", "--repo", repo.root, "--json").json()
    logits = ort_run(model, {"x": x})["logits"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert [p["label"] for p in out["predictions"]] == [["cat", "dog", "bird"][i] for i in logits.argmax(1)]
    assert np.allclose([p["probability"] for p in out["predictions"]], probs.max(1), atol=1e-6)

    bench = run_cli("bench", "clf", "--batch-sizes", "1,8", "--seconds", "0.05", "--repo", repo.root, "--json").json()
    assert {(r["runtime"], r["batch_size"]) for r in bench["results"]} == {("onnx", 1), ("onnx", 8)}


@pytest.mark.parametrize("case", ["multi_io", "fixed_batch", "no_batch", "batch_not_first", "float16", "opset11",
                                  "gru"])
def test_graph_import_then_predict_equals_onnxruntime(repo, tmp_path, case):
    path = tmp_path / f"{case}.onnx"
    batched = True
    if case == "multi_io":
        path, feeds = graphs.multi_io(path)
    elif case == "fixed_batch":
        path, feeds = graphs.unary(path, [2, 4])
        batched = False
    elif case == "no_batch":
        path, feeds = graphs.unary(path, [4], op="Neg")
        batched = False
    elif case == "batch_not_first":
        path, feeds = graphs.unary(path, [5, "N"], op="Abs")
        batched = False
    elif case == "float16":
        path, feeds = graphs.unary(path, ["N", 4], dtype="float16")
    elif case == "opset11":
        path = graphs.classifier(path, opset=11, probabilities=True)
        feeds = {"x": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}
    else:
        path, feeds = graphs.torch_gru(path)
    report = run_cli("import", "onnx", path, "--name", case, "--repo", repo.root, "--json").json()
    assert report["task"] is None and repo.resolve(case).meta["task"] is None
    config = (repo.root / case / "config.pbtxt").read_text()
    assert f"max_batch_size: {64 if batched else 0}" in config
    if case == "batch_not_first":
        assert "dims: [ 5, -1 ]" in config
    np.savez(tmp_path / "in.npz", **feeds)
    got = predicted(repo, case, tmp_path / "in.npz")
    want = ort_run(path, feeds)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape and np.array_equal(got[name].astype(value.dtype), value), name


def test_bench_builds_inputs_from_any_graph_and_takes_shape(repo, tmp_path):
    """Issue 17: bench feeds every input in its own dtype (float, int64, bool), sizes the open
    dimensions from --shape (B: the batch size), and says what is missing in one line."""
    bench = ("--batch-sizes", "1,2", "--seconds", "0.02", "--repo", repo.root)
    run_cli("import", "onnx", graphs.multi_io(tmp_path / "m.onnx")[0], "--name", "multi", "--repo", repo.root)
    out = run_cli("bench", "multi", *bench, "--json").json()
    assert [(r["runtime"], r["batch_size"]) for r in out["results"]] == [("onnx", 1), ("onnx", 2)]

    run_cli("import", "onnx", graphs.torch_gru(tmp_path / "g.onnx")[0], "--name", "gru", "--repo", repo.root)
    line = one_line_error(run_cli("bench", "gru", *bench, expect=2))
    assert "'x'" in line and "[?, ?, 3]" in line and "--shape x=Bx?x3" in line
    out = run_cli("bench", "gru", *bench, "--shape", "x=Bx6x3", "--json").json()
    assert [r["batch_size"] for r in out["results"]] == [1, 2] and all(r["calls"] > 0 for r in out["results"])
    assert "declares 'x' as [?, ?, 3]" in one_line_error(run_cli("bench", "gru", *bench, "--shape", "x=Bx6x4",
                                                                 expect=2))
    assert "no such input (it has: x)" in one_line_error(run_cli("bench", "gru", *bench, "--shape", "h=2",
                                                                 expect=2))
    assert "not a positive size" in one_line_error(run_cli("bench", "gru", *bench, "--shape", "x=Bx0x3", expect=2))

    run_cli("import", "onnx", graphs.unary(tmp_path / "u.onnx", [4], op="Neg")[0], "--name", "fixed",
            "--repo", repo.root)
    assert "takes batch size 2 (their sizes are fixed)" in one_line_error(run_cli("bench", "fixed", *bench, expect=2))
    out = run_cli("bench", "fixed", "--batch-sizes", "1", "--seconds", "0.02", "--repo", repo.root, "--json").json()
    assert out["results"][0]["batch_size"] == 1


def test_predict_takes_one_npy_per_named_input(repo, tmp_path):
    """Issue 17: --input NAME=FILE.npy, one per graph input, is one input set (each in its own dtype)."""
    path, feeds = graphs.multi_io(tmp_path / "m.onnx")
    run_cli("import", "onnx", path, "--name", "multi", "--repo", repo.root)
    args = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / name}.npy"]
    out = run_cli("predict", "multi", *args, "--repo", repo.root, "--json").json()
    (entry,) = out["outputs"]
    for name, value in ort_run(path, feeds).items():
        assert np.array_equal(np.asarray(entry["outputs"][name]).astype(value.dtype), value), name
    line = one_line_error(run_cli("predict", "multi", *args[:4], "--repo", repo.root, expect=2))
    assert "nothing given for model input 'mask'" in line
    line = one_line_error(run_cli("predict", "multi", *args, "--input", f"state={tmp_path / 'x.npy'}",
                                  "--repo", repo.root, expect=2))
    assert "no input 'state' (it has: x, ids, mask)" in line
    assert "given twice" in one_line_error(run_cli("predict", "multi", *args, *args[:2], "--repo", repo.root,
                                                   expect=2))
    np.save(tmp_path / "short.npy", feeds["ids"][:2])
    line = one_line_error(run_cli("predict", "multi", *args[:2], "--input", f"ids={tmp_path / 'short.npy'}",
                                  *args[4:], "--repo", repo.root, expect=2))
    assert "different numbers of samples (2, 5)" in line
    # a single-input classifier takes the same form
    clf = graphs.classifier(tmp_path / "c.onnx")
    run_cli("import", "onnx", clf, "--name", "c", "--labels", "a,b,c", "--repo", repo.root)
    np.save(tmp_path / "rows.npy", np.ones((3, 4), np.float32))
    out = run_cli("predict", "c", "--input", f"x={tmp_path / 'rows.npy'}", "--repo", repo.root, "--json").json()
    assert len(out["predictions"]) == 3


def test_import_counts_weights_held_in_constant_nodes(repo, tmp_path):
    """Issue 17: a graph whose weights are Constant nodes, not initializers, counted 0 parameters."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")  # an integer shape: not a weight
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("Constant", [], ["s"], value=shape),
         helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["y"])],
        "constants", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
    path = tmp_path / "const.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                       ir_version=8).SerializeToString())
    run_cli("import", "onnx", path, "--name", "const", "--repo", repo.root)
    assert repo.resolve("const").meta["params"] == 12
    models = run_cli("models", "--repo", repo.root, "--json").json()
    assert next(m for m in models["models"] if m["name"] == "const")["params"] == 12


def test_a_graph_copied_in_by_hand_is_pointed_to_import(repo, tmp_path):
    """Issue 17: serve said "run `dlkit export onnx` first" for a model.onnx copied in without meta.json."""
    folder = repo.root / "raw" / "1"
    folder.mkdir(parents=True)
    graphs.classifier(folder / "model.onnx")
    want = f"{folder} holds a model.onnx but no meta.json: bring it in with `dlkit import onnx {folder / 'model.onnx'}"
    assert want in one_line_error(run_cli("predict", "raw", tmp_path / "x.npy", "--repo", repo.root, expect=2))
    served = subprocess.run([sys.executable, "-m", "dlkit", "serve", "--models", "raw", "--port", "0",
                             "--grpc-port", "0", "--repo", str(repo.root)], capture_output=True, text=True, timeout=120)
    assert served.returncode == 2 and want in served.stderr
    run_cli("import", "onnx", folder / "model.onnx", "--name", "raw", "--repo", repo.root)
    assert repo.resolve("raw").version == 2  # the hand-made folder keeps its number


def test_one_sample_gets_a_batch_axis(repo, tmp_path):
    path = graphs.classifier(tmp_path / "c.onnx")
    run_cli("import", "onnx", path, "--name", "c", "--repo", repo.root)
    np.savez(tmp_path / "one.npz", x=np.ones(4, np.float32))
    out = run_cli("predict", "c", tmp_path / "one.npz", "--repo", repo.root, "--json").json()
    assert len(out["outputs"][0]["outputs"]["logits"]) == 1


@pytest.mark.parametrize("case", graphs.BACKEND)
def test_onnx_backend_models_round_trip(repo, tmp_path, case):
    path, inputs, expected = graphs.backend_case(case)
    name = case.rpartition("/")[2].replace("test_", "").replace("_", "-")
    run_cli("import", "onnx", path, "--name", name, "--repo", repo.root)
    np.savez(tmp_path / "in.npz", **inputs)
    got = predicted(repo, name, tmp_path / "in.npz")
    outputs = [o["name"] for o in repo.resolve(name).meta["onnx"]["outputs"]]
    for out_name, want in zip(outputs, expected):
        np.testing.assert_allclose(got[out_name].astype(want.dtype), want, rtol=1e-5, atol=1e-6)


def test_wrong_input_names_dtype_and_shape_are_one_line(repo, tmp_path):
    path, feeds = graphs.multi_io(tmp_path / "m.onnx")
    run_cli("import", "onnx", path, "--name", "m", "--repo", repo.root)
    np.savez(tmp_path / "missing.npz", x=feeds["x"], ids=feeds["ids"])
    line = one_line_error(run_cli("predict", "m", tmp_path / "missing.npz", "--repo", repo.root, expect=2))
    assert "no array named 'mask'" in line and "missing.npz" in line
    np.savez(tmp_path / "dtype.npz", **{**feeds, "ids": feeds["ids"].astype(np.float32)})
    line = one_line_error(run_cli("predict", "m", tmp_path / "dtype.npz", "--repo", repo.root, expect=2))
    assert "dtype.npz:ids: dtype float32 does not fit model input 'ids' (int64)" in line
    np.savez(tmp_path / "shape.npz", **{**feeds, "x": feeds["x"][:, :3]})
    line = one_line_error(run_cli("predict", "m", tmp_path / "shape.npz", "--repo", repo.root, expect=2))
    assert "shape (5, 3) does not fit model input 'x': expected (?, 4)" in line
    np.save(tmp_path / "x.npy", feeds["x"])
    line = one_line_error(run_cli("predict", "m", tmp_path / "x.npy", "--repo", repo.root, expect=2))
    assert "the model has 3 inputs (x, ids, mask)" in line


def _nothing_written(repo) -> None:
    assert not repo.root.exists() or not any(repo.root.iterdir()), list(repo.root.rglob("*"))


def test_bad_onnx_imports_are_one_line_and_write_nothing(repo, tmp_path):
    model = graphs.classifier(tmp_path / "c.onnx")
    line = one_line_error(run_cli("import", "onnx", tmp_path / "nope.onnx", "--name", "a", "--repo", repo.root,
                                  expect=2))
    assert "nope.onnx: no such ONNX file" in line
    (tmp_path / "evil.onnx").write_bytes(pickle.dumps({"payload": 1}))
    line = one_line_error(run_cli("import", "onnx", tmp_path / "evil.onnx", "--name", "a", "--repo", repo.root,
                                  expect=2))
    assert "evil.onnx: not a valid ONNX file" in line
    line = one_line_error(run_cli("import", "onnx", model, "--name", "a", "--labels", "x,y", "--repo", repo.root,
                                  expect=2))
    assert "--labels: 2 names, but output 'logits'" in line and "has 3 classes" in line
    line = one_line_error(run_cli("import", "onnx", model, "--name", "a", "--labels", "x,,y", "--repo", repo.root,
                                  expect=2))
    assert "--labels 'x,,y'" in line
    line = one_line_error(run_cli("import", "onnx", model, "--name", "../a", "--repo", repo.root, expect=2))
    assert "invalid model name '../a'" in line
    _nothing_written(repo)


def test_unknown_task_quantize_without_data_is_one_line(repo, tmp_path):
    path, _ = graphs.unary(tmp_path / "u.onnx", ["N", 4])
    run_cli("import", "onnx", path, "--name", "u", "--repo", repo.root)
    line = one_line_error(run_cli("quantize", "u", "--repo", repo.root, expect=2))
    assert "--calibration-data" in line
    assert repo.names() == ["u"]


# -- quantize an imported graph -----------------------------------------------------------------------
def test_quantize_imported_graph_with_user_calibration_data(repo, tmp_path):
    model = graphs.classifier(tmp_path / "c.onnx", features=16, classes=4)
    run_cli("import", "onnx", model, "--name", "c", "--labels", "a,b,c,d", "--repo", repo.root)
    rng = np.random.default_rng(7)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((128, 16)).astype(np.float32))
    np.savez(tmp_path / "check.npz", x=rng.standard_normal((256, 16)).astype(np.float32))
    report = run_cli("quantize", "c", "--method", "static", "--calibration-data", tmp_path / "cal.npz",
                     "--data", tmp_path / "check.npz", "--tolerance", "50", "--measure-seconds", "0.05",
                     "--repo", repo.root, "--json").json()
    assert report["quality"] == "agreement" and report["model"] == "c-int8"
    new = repo.resolve("c-int8")
    calibration = new.meta["quantization"]["calibration"]
    assert calibration["source"] == str((tmp_path / "cal.npz").resolve()) and calibration["samples"] == 128
    assert new.meta["labels"] == ["a", "b", "c", "d"] and new.meta["parent"] == {"name": "c", "version": 1}
    chosen = next(r for r in report["table"] if r["chosen"])
    assert 0 < chosen["relative_difference"] < 50 and 0 <= chosen["top1_agreement"] <= 1
    # the quantized graph predicts through the same path as its parent
    out = run_cli("predict", "c-int8", tmp_path / "check.npz", "--repo", repo.root, "--json").json()
    assert len(out["predictions"]) == 256


def test_quantize_upgrades_an_opset_11_graph_for_per_channel_scales(repo, tmp_path):
    """Issue 17: below opset 13 DequantizeLinear has no axis, so a per-channel static model of an
    opset-11 graph was invalid; the prepared copy is converted to opset 13 and the step is said."""
    model = graphs.classifier(tmp_path / "old.onnx", features=16, classes=4, opset=11)
    run_cli("import", "onnx", model, "--name", "old", "--repo", repo.root)
    np.save(tmp_path / "cal.npy", np.random.default_rng(3).standard_normal((64, 16)).astype(np.float32))
    result = run_cli("quantize", "old", "--method", "static", "--per-channel", "--calibration-data",
                     tmp_path / "cal.npy", "--tolerance", "50", "--measure-seconds", "0.05", "--repo", repo.root)
    assert "upgraded the graph from opset 11 to 13" in result.stderr
    new = repo.resolve("old-int8")
    assert new.meta["quantization"]["preprocess"]["opset_upgraded"] == [11, 13]
    import onnx

    assert next(o.version for o in onnx.load(str(new.onnx_path)).opset_import if o.domain in ("", "ai.onnx")) == 13
    assert repo.resolve("old").meta["onnx"]["opset"] == 11  # the parent is left as it was
    out = run_cli("predict", "old-int8", tmp_path / "cal.npy", "--repo", repo.root, "--json").json()
    assert np.asarray(out["outputs"][0]["outputs"]["logits"]).shape == (64, 4)


# -- serve with unmodified tritonclient -----------------------------------------------------------------
class Server:
    def __init__(self, root: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "dlkit", "serve", "--repo", str(root), "--port", "0",
                                      "--grpc-port", "0", "--threads", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stderr] + [self.lines.put(None)],
                         daemon=True).start()
        seen = []
        while True:
            line = self.lines.get(timeout=STARTUP_SECONDS)
            if line is None:
                raise AssertionError("server ended:\n" + "".join(seen))
            seen.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.url = f"127.0.0.1:{found.group(1)}"
                return

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_serve_imported_graphs_with_tritonclient(repo, tmp_path):
    httpclient = pytest.importorskip("tritonclient.http")
    clf = graphs.classifier(tmp_path / "c.onnx")
    multi, feeds = graphs.multi_io(tmp_path / "m.onnx")
    run_cli("import", "onnx", clf, "--name", "clf", "--labels", "a,b,c", "--repo", repo.root)
    run_cli("import", "onnx", multi, "--name", "multi", "--repo", repo.root)
    server = Server(repo.root)
    try:
        client = httpclient.InferenceServerClient(server.url, network_timeout=60)
        assert client.is_model_ready("clf") and client.is_model_ready("multi")
        inputs = []
        for name, kind in (("x", "FP32"), ("ids", "INT64"), ("mask", "BOOL")):
            tensor = httpclient.InferInput(name, list(feeds[name].shape), kind)
            tensor.set_data_from_numpy(feeds[name])
            inputs.append(tensor)
        result = client.infer("multi", inputs)
        for name, want in ort_run(multi, feeds).items():
            assert np.array_equal(result.as_numpy(name), want), name
        x = feeds["x"]
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        logits = client.infer("clf", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(logits, ort_run(clf, {"x": x})["logits"], rtol=1e-6)
        assert client.get_model_metadata("multi")["inputs"][2]["datatype"] == "BOOL"
    finally:
        server.stop()


# -- import torch -----------------------------------------------------------------------------------
USER_CODE = '''
import torch
from torch import nn


def classifier():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 2)

    def forward(self, x, ids):
        return self.lin(x + self.emb(ids).sum(1)), ids.sum(1)


def pair():
    return Pair()


def broken():
    raise ValueError("no config file here")


def not_a_module():
    return 42
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """The user's own module (a unique name: modules stay imported in this process) and
    weights for its factories, in a folder that is the current directory."""
    import torch
    from safetensors.torch import save_file

    name = f"usernet_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    torch.manual_seed(0)
    for factory in ("classifier", "pair"):
        save_file(getattr(module, factory)().state_dict(), str(tmp_path / f"{factory}.safetensors"))
    return name, module


def test_torch_import_export_predict_quantize_serve_distill(repo, tmp_path, user_code):
    import torch

    name, module = user_code
    labels = ",".join(str(i) for i in range(10))
    # the real CLI in a subprocess: the module is found in the current directory
    proc = subprocess.run([sys.executable, "-m", "dlkit", "import", "torch", f"{name}:classifier", "--weights",
                           "classifier.safetensors", "--example-input", "1,1,8,8", "--labels", labels, "--name", "tnet",
                           "--repo", str(repo.root), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["params"] == 64 * 32 + 32 + 32 * 10 + 10
    version = repo.resolve("tnet")
    source = version.meta["source"]
    assert source["kind"] == "torch" and source["factory"] == f"{name}:classifier"
    assert source["example_input"] == {"input": {"shape": [1, 1, 8, 8], "dtype": "float32"}}
    assert version.has_weights() and not version.has_onnx()

    export = run_cli("export", "onnx", "tnet", "--repo", repo.root, "--json").json()
    assert export["max_abs_diff"] <= 1e-4 and [o["name"] for o in export["outputs"]] == ["logits", "probabilities"]
    net = module.classifier()
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(tmp_path / "classifier.safetensors")))
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = run_cli("predict", "tnet", tmp_path / "x.npy", "--repo", repo.root, "--json").json()
    with torch.inference_mode():
        want = torch.softmax(net(torch.from_numpy(x)), -1).numpy()
    assert [p["class"] for p in out["predictions"]] == want.argmax(1).tolist()
    np.testing.assert_allclose([p["probability"] for p in out["predictions"]], want.max(1), atol=1e-5)

    np.savez(tmp_path / "cal.npz", input=np.random.default_rng(1).uniform(0, 1, (64, 1, 8, 8)).astype(np.float32))
    report = run_cli("quantize", "tnet", "--method", "dynamic", "--calibration-data", tmp_path / "cal.npz",
                     "--tolerance", "50", "--measure-seconds", "0.05", "--repo", repo.root, "--json").json()
    assert report["model"] == "tnet-int8" and report["quality"] == "agreement"

    distilled = run_cli("distill", "tnet", "--student", "mlp", "--data", "digits", "--epochs", "1",
                        "--set", "hidden=[16]", "--repo", repo.root, "--json").json()
    student = repo.resolve(distilled["model"])
    assert student.meta["parent"] == {"name": "tnet", "version": 1}

    httpclient = pytest.importorskip("tritonclient.http")
    server = Server(repo.root)
    try:
        client = httpclient.InferenceServerClient(server.url, network_timeout=60)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("tnet", [tensor]).as_numpy("probabilities"), want, atol=1e-5)
    finally:
        server.stop()


def test_torch_import_several_inputs_int64(repo, tmp_path, user_code):
    import torch

    name, module = user_code
    run_cli("import", "torch", f"{name}:pair", "--weights", "pair.safetensors", "--example-input",
            "x=1,4;ids=1,3:int64", "--repo", repo.root)
    export = run_cli("export", "onnx", "pair", "--repo", repo.root, "--json").json()
    assert [i["dtype"] for i in export["inputs"]] == ["float32", "int64"]
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32),
             "ids": np.array([[1, 2, 3], [0, 0, 9], [5, 5, 5]], np.int64)}
    np.savez(tmp_path / "in.npz", **feeds)
    got = predicted(repo, "pair", tmp_path / "in.npz")
    net = module.pair()
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(tmp_path / "pair.safetensors")))
    with torch.inference_mode():
        y, s = net(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["ids"]))
    np.testing.assert_allclose(got["output_0"], y.numpy(), atol=1e-5)
    assert np.array_equal(got["output_1"], s.numpy())


@pytest.mark.parametrize("args, message", [
    (["{m}:broken", "--weights", "classifier.safetensors", "--example-input", "1,64"],
     r"{m}:broken: broken\(\) raised ValueError: no config file here"),
    (["{m}:not_a_module", "--weights", "classifier.safetensors", "--example-input", "1,64"],
     r"not_a_module\(\) returned int, not a torch.nn.Module"),
    (["nosuchmodule_xyz:f", "--weights", "classifier.safetensors", "--example-input", "1,64"],
     r"importing 'nosuchmodule_xyz' failed \(ModuleNotFoundError"),
    (["{m}:classifier", "--weights", "pair.safetensors", "--example-input", "1,1,8,8"],
     r"pair.safetensors: weights do not fit the module: tensor '1.weight' is missing"),
    (["{m}:classifier", "--weights", "cut.safetensors", "--example-input", "1,1,8,8"],
     r"cut.safetensors: tensor '1.weight' has shape \[32, 63\], the module expects \[32, 64\]"),
    (["{m}:classifier", "--weights", "evil.pt", "--example-input", "1,1,8,8"],
     r"evil.pt: not a readable safetensors file"),
    (["{m}:classifier", "--weights", "classifier.safetensors", "--example-input", "1,8,x"], r"'1,8,x' is not a shape"),
    (["{m}:classifier", "--weights", "classifier.safetensors", "--example-input", "1,5"],
     r"forward on --example-input failed \(RuntimeError"),
    (["{m}:classifier", "--weights", "classifier.safetensors", "--example-input", "1,1,8,8", "--labels", "a,b"],
     r"--labels: 2 names, but .*first output has shape \[2, 10\]"),
    (["{m}", "--weights", "classifier.safetensors", "--example-input", "1,64"], r"expected MODULE:FACTORY"),
])
def test_torch_import_bad_input_is_one_line_and_writes_nothing(repo, tmp_path, user_code, args, message):
    import torch
    from safetensors.torch import save_file

    name, module = user_code
    state = module.classifier().state_dict()
    save_file({**state, "1.weight": state["1.weight"][:, :63].contiguous()}, str(tmp_path / "cut.safetensors"))
    torch.save(state, tmp_path / "evil.pt")  # a pickle: never loaded
    args = [a.replace("{m}", name) for a in args]
    line = one_line_error(run_cli("import", "torch", *args, "--repo", repo.root, expect=2))
    assert re.search(message.replace("{m}", name), line), line
    _nothing_written(repo)
