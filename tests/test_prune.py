"""Structured pruning on real models: whole channels and neurons removed by torch-pruning, the
smaller dense model fine-tuned on the supervised trainer, stored as architecture ``pruned`` that
loads, evaluates, exports and quantizes like any other; and the inputs it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from dlkit.cli.group import cli


def dlkit(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def conv_widths(path: Path) -> list[int]:
    model = onnx.load(str(path))
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    return [weights[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"]


def test_prune_removes_channels_fine_tunes_and_stays_an_ordinary_model(exported):
    from dlkit.infer.evaluate import evaluate
    from dlkit.training.build import load_model

    parent = exported.resolve("cnn-digits")
    result = dlkit("prune", "cnn-digits", "--sparsity", "0.5", "--epochs", "1", "--measure-seconds", "0.05", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    expected = ("cnn-digits-pruned", 1, {"name": "cnn-digits", "version": 1})
    assert (out["model"], out["version"], out["parent"]) == expected
    # channels [8, 16] (two convs each): half of every conv's output channels are gone, physically
    assert conv_widths(parent.onnx_path) == [8, 8, 16, 16]
    new = exported.resolve("cnn-digits-pruned")
    assert conv_widths(new.onnx_path) == [4, 4, 8, 8]
    assert out["params_ratio"] < 0.45 and out["params"] == new.meta["params"]
    m = out["measured"]
    assert 0 < m["size_ratio"] < 0.6 and m["latency_b1_ratio"] > 0 and m["latency_b64_ratio"] > 0
    meta = new.meta
    assert meta["arch"] == "pruned" and meta["method"] == "prune" and meta["parent"] == out["parent"]
    assert meta["hparams"]["base"] == {"arch": "cnn", "hparams": parent.meta["hparams"]}
    assert meta["pruning"]["before"] == out["metrics_parent"] and meta["metrics"] == out["metrics"]
    # it loads in torch at its pruned sizes (strictly), and onnxruntime agrees with the stored accuracy
    module, spec = load_model(new)
    assert spec.name == "pruned" and sum(p.numel() for p in module.parameters()) == out["params"]
    assert evaluate(new, runtime="onnx", provider="cpu")["accuracy"] == pytest.approx(meta["metrics"]["test_accuracy"])
    assert evaluate(new, runtime="torch")["accuracy"] == pytest.approx(meta["metrics"]["test_accuracy"], abs=1e-6)
    # composable: prune, then quantize
    q = dlkit("quantize", "cnn-digits-pruned", "--method", "dynamic", "--tolerance", "100", "--measure-seconds",
              "0.02", "--provider", "cpu", "--json")
    assert q.exit_code == 0, q.stderr
    quantized = exported.resolve("cnn-digits-pruned-int8")
    assert [e["name"] for e in quantized.meta["lineage"]] == ["cnn-digits", "cnn-digits-pruned"]


def test_prune_mlp_through_the_compressor_api(exported):
    from dlkit.testing import check_compressor

    parent = exported.resolve("mlp-digits")
    new = check_compressor("prune", parent, exported, {"sparsity": 0.25, "epochs": 0, "measure_seconds": 0.05})
    hidden = new.meta["hparams"]["shapes"]["net.1.weight"]
    assert hidden == [48, 64]  # hidden [64]: a quarter of the neurons removed, its 64 inputs kept
    assert new.meta["hparams"]["shapes"]["net.2.weight"] == [48]  # the batch norm that reads them, too
    assert new.meta["pruning"]["epochs"] == 0 and new.meta["pruning"]["after_pruning"] == new.meta["metrics"]


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "--sparsity must be a fraction"),
    (["--sparsity", "0"], "--sparsity must be a fraction"),
    (["--epochs", "-1"], "--epochs must be an integer >= 0"),
    (["--name", "cnn-digits"], "a name of its own"),
    (["--name", "../escape"], "invalid model name"),
])
def test_bad_options_are_one_line_exit_2_nothing_written(exported, args, message):
    before = tree(exported.root)
    result = dlkit("prune", "cnn-digits", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert tree(exported.root) == before


def test_a_graph_without_torch_weights_is_refused(exported):
    dlkit("quantize", "mlp-digits", "--method", "dynamic", "--tolerance", "100", "--measure-seconds", "0.02",
          "--provider", "cpu")
    before = tree(exported.root)
    result = dlkit("prune", "mlp-digits-int8")
    assert result.exit_code == 2 and "no PyTorch weights to prune" in result.stderr
    assert tree(exported.root) == before


def test_a_residual_cnn_trains_exports_prunes_and_quantizes(repo):
    """``residual = true`` builds ResNet basic blocks (identity and 1x1 projection shortcuts): the
    graph matches torch (export's parity check), and pruning removes channels consistently on both
    sides of every sum, so the pruned model still exports and quantizes."""
    from dlkit.training.build import load_model

    result = dlkit("train", "cnn", "--name", "res", "--epochs", "1", "--set", "residual=true", "--set",
                   "channels=[8, 16]", "--set", "hidden=16", "--set", "channels_last=false")
    assert result.exit_code == 0, result.stderr
    module, _ = load_model(repo.resolve("res"))
    blocks = [m for m in module.modules() if type(m).__name__ == "Residual"]
    assert [type(b.shortcut).__name__ for b in blocks] == ["Sequential", "Sequential"]  # 1 -> 8 -> 16 channels
    assert dlkit("export", "onnx", "res").exit_code == 0
    model = onnx.load(str(repo.resolve("res").onnx_path))
    assert sum(n.op_type == "Add" for n in model.graph.node) == 2
    assert conv_widths(repo.resolve("res").onnx_path) == [8, 8, 8, 16, 16, 16]  # body, body, shortcut per block
    pruned = dlkit("prune", "res", "--sparsity", "0.5", "--epochs", "1", "--measure-seconds", "0.05")
    assert pruned.exit_code == 0, pruned.stderr
    assert conv_widths(repo.resolve("res-pruned").onnx_path) == [4, 4, 4, 8, 8, 8]
    q = dlkit("quantize", "res-pruned", "--method", "static", "--tolerance", "100", "--measure-seconds", "0.02",
              "--provider", "cpu")
    assert q.exit_code == 0, q.stderr
