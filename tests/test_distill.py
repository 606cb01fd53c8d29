"""The distillation plugin: a real CNN teacher taught to a small MLP on digits, its lineage and
report, an ONNX-only teacher through onnxruntime, and the inputs it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlkit.testing import check_command, check_compressor, run_cli


def dlkit(*args: str):
    return run_cli(*args, expect=None)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- the loss ------------------------------------------------------------------------------------------
def test_loss_is_hintons_formula():
    from dlkit_distill.trainer import distillation_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0])
    t, alpha = 3.0, 0.7
    p = torch.softmax(teacher / t, 1)
    kl = (p * (p.log() - torch.log_softmax(student / t, 1))).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(student, labels)
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert torch.allclose(distillation_loss(student, teacher, labels, t, alpha), expected, atol=1e-6)
    # a student that already matches the teacher has nothing left to learn from it
    assert distillation_loss(teacher, teacher, labels, t, 1.0).item() == pytest.approx(0, abs=1e-6)
    assert torch.equal(distillation_loss(student, None, labels, t, 0.0), ce)


# -- a real distillation through the command line -----------------------------------------------------
def test_distill_cnn_into_mlp(trained):
    from dlkit.infer.evaluate import evaluate

    teacher = trained.resolve("cnn-digits")
    result = dlkit("distill", "cnn-digits", "--student", "mlp", "--set", "hidden=[16]", "--epochs", "2",
                   "--temperature", "3", "--alpha", "0.8", "--baseline", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert (out["model"], out["version"], out["method"]) == ("cnn-digits-distilled-mlp", 1, "distill")

    student = trained.resolve("cnn-digits-distilled-mlp:1")
    meta = student.meta
    assert meta["parent"] == {"name": "cnn-digits", "version": teacher.version}
    assert meta["method"] == "distill" and meta["arch"] == "mlp" and meta["hparams"]["hidden"] == [16]
    assert meta["distill"]["teacher"] == {"name": "cnn-digits", "version": 1, "runtime": "torch"}
    assert (meta["distill"]["temperature"], meta["distill"]["alpha"]) == (3.0, 0.8)
    assert meta["data"]["source"] == "digits" and meta["data"]["seed"] == teacher.meta["data"]["seed"]
    assert meta["labels"] == teacher.meta["labels"] and meta["input_spec"] == teacher.meta["input_spec"]
    assert "teacher" not in meta["train"]  # a path would go stale when the repository moves
    assert [json.loads(line)["epoch"] for line in (student.path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (student.path / "checkpoint.safetensors").exists()

    # the student is an ordinary model: it evaluates from its meta.json alone
    metrics = meta["metrics"]
    assert evaluate(student)["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert {"test_accuracy", "val_accuracy", "test_loss"} <= set(metrics)

    report = out["report"]
    assert report == meta["distill"]["report"]
    assert report["teacher"]["params"] == teacher.meta["params"]
    assert report["teacher"]["test_accuracy"] == pytest.approx(teacher.meta["metrics"]["test_accuracy"])
    assert report["student"]["params"] == meta["params"] < report["teacher"]["params"]
    assert report["student"]["test_accuracy"] == metrics["test_accuracy"]
    assert report["param_ratio"] == pytest.approx(report["teacher"]["params"] / meta["params"])
    base = report["baseline"]
    assert base["params"] == meta["params"] and 0 < base["test_accuracy"] <= 1
    gap = report["teacher"]["test_accuracy"] - base["test_accuracy"]
    if gap > 0:
        assert report["gap_recovered"] == pytest.approx((metrics["test_accuracy"] - base["test_accuracy"]) / gap)
    else:
        assert report["gap_recovered"] is None

    # listed by `dlkit --help`; people get a table, not JSON
    assert check_command("distill").exit_code == 0
    human = dlkit("distill", "cnn-digits", "--student", "mlp", "--set", "hidden=[16]", "--epochs", "1")
    assert human.exit_code == 0 and "teacher" in human.stdout and "cnn-digits-distilled-mlp:2" in human.stdout


def test_labels_outside_the_labelled_subset_do_not_count():
    from dlkit_distill.subset import labelled_indices
    from dlkit_distill.trainer import distillation_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mask = torch.tensor([True, False, True, False, False, True])
    flipped = torch.where(mask, labels, (labels + 1) % 3)  # only unlabelled samples' labels change
    a = distillation_loss(student, teacher, labels, 2.0, 0.5, labelled=mask)
    assert torch.equal(a, distillation_loss(student, teacher, flipped, 2.0, 0.5, labelled=mask))
    assert not torch.equal(a, distillation_loss(student, teacher, flipped, 2.0, 0.5))
    hard = torch.nn.functional.cross_entropy(student[mask], labels[mask])
    assert torch.allclose(distillation_loss(student, None, labels, 2.0, 0.0, labelled=mask), hard)
    y = np.repeat(np.arange(3), [10, 20, 2])
    idx = labelled_indices(y, 5, seed=1)
    assert np.bincount(y[idx]).tolist() == [5, 5, 2] and idx.tolist() == sorted(idx.tolist())
    assert labelled_indices(y, 5, seed=1).tolist() == idx.tolist() != labelled_indices(y, 5, seed=2).tolist()


def test_few_labels_the_teacher_labels_the_transfer_set(trained):
    """--set labelled=N: the student's hard labels are N per class, the teacher's soft targets
    cover the whole training split; the baseline has the N per class only."""
    result = dlkit("distill", "cnn-digits", "--student", "mlp", "--set", "hidden=[16]", "--set", "labelled=3",
                   "--epochs", "2", "--baseline", "--name", "few", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    student = trained.resolve("few")
    assert student.meta["train"]["labelled"] == 3
    assert out["report"]["baseline"]["test_accuracy"] > 0


def test_alpha_zero_is_the_baseline(trained):
    """The baseline differs from the distilled run in the loss alone: same seed, start and batches."""
    result = dlkit("distill", "cnn-digits", "--student", "mlp", "--set", "hidden=[16]", "--epochs", "2",
                   "--alpha", "0", "--baseline", "--seed", "3", "--name", "plain", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["student"]["test_accuracy"] == report["baseline"]["test_accuracy"]
    assert trained.resolve("plain").meta["metrics"]["test_loss"] == report["baseline"]["test_loss"]


# -- a teacher that only has model.onnx -----------------------------------------------------------------
def test_onnx_only_teacher(trained):
    from dlkit_distill.teacher import load_teacher

    from dlkit.data.load import load_dataset
    from dlkit.export.onnx import export_onnx

    teacher = trained.resolve("cnn-digits")
    torch_teacher = load_teacher(teacher)
    export_onnx(teacher)
    teacher.weights_path.unlink()
    onnx_teacher = load_teacher(teacher)
    assert onnx_teacher.runtime == "onnx" and onnx_teacher.params == teacher.meta["params"]
    x = load_dataset("digits", {}, teacher.meta["data"]["seed"]).x_train
    assert torch.allclose(onnx_teacher.logits(x), torch_teacher.logits(x), atol=1e-4)

    # through the registered compressor, as another plugin (or a pipeline) would call it; the
    # conformance check also proves the teacher's folder is left untouched
    student = check_compressor("distill", teacher, trained, {"student": "mlp", "sets": ["hidden=[16]"], "epochs": 1})
    assert student.meta["distill"]["teacher"]["runtime"] == "onnx"
    report = student.meta["distill"]["report"]
    assert report["teacher"]["test_accuracy"] == pytest.approx(teacher.meta["metrics"]["test_accuracy"])
    assert student.has_weights()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as a third party's
def test_third_party_onnx_teacher(trained):
    """A graph dlkit did not write: its own input name, logits only, no params in meta.json."""
    from dlkit_distill.teacher import load_teacher

    from dlkit.data.load import load_dataset

    teacher = trained.resolve("mlp-digits")
    torch_teacher = load_teacher(teacher)
    torch.onnx.export(torch_teacher.module, (torch.zeros(2, 1, 8, 8),), str(teacher.onnx_path),
                      input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    teacher.weights_path.unlink()
    teacher.update_meta(params=None)
    onnx_teacher = load_teacher(teacher)
    assert onnx_teacher.runtime == "onnx" and onnx_teacher.input_name == "pixels"
    x = load_dataset("digits", {}, 0).x_test
    assert torch.allclose(onnx_teacher.logits(x), torch_teacher.logits(x), atol=1e-4)
    # counted in the graph: the weights plus batch-norm statistics, which a graph stores alike
    torch_params = sum(p.numel() for p in torch_teacher.module.parameters())
    assert torch_params <= onnx_teacher.params <= torch_params * 1.05
    result = dlkit("distill", "mlp-digits", "--student", "mlp", "--set", "hidden=[16]", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["report"]["teacher"]["runtime"] == "onnx"


def test_trainer_is_registered(trained, tmp_path):
    """The ``distill`` trainer runs from a TrainRun like any trainer, teacher named in its config."""
    from dlkit.data.load import load_dataset
    from dlkit.plugins import get_registry
    from dlkit.training.build import build_model
    from dlkit.training.run import TrainRun

    registry = get_registry()
    trainer = registry.trainer("distill")
    assert {"temperature", "alpha", "teacher", "epochs", "augment"} <= set(trainer.defaults)
    teacher = trained.resolve("cnn-digits")
    data = load_dataset("digits", {}, 0)
    spec = registry.model("mlp")
    model = build_model(spec, {**spec.defaults, "hidden": [16]}, data.input_spec, data.num_classes)
    # augmentation on: the teacher labels each shifted batch as the student sees it
    config = {**trainer.defaults, "epochs": 1, "augment": 1, "teacher": str(teacher.path)}
    metrics = trainer.fit(TrainRun(model=model, spec=spec, data=data, config=config, seed=0, workdir=tmp_path,
                                   quiet=True))
    assert metrics["epochs"] == 1 and (tmp_path / "metrics.jsonl").is_file()


# -- bad input: one line, exit 2, nothing written --------------------------------------------------------
def as_generator(repo):
    """A teacher whose meta.json says what a GAN's says."""
    v = repo.resolve("mlp-digits")
    v.update_meta(task="generation", arch="gan")


def blobs_teacher(repo):
    from dlkit.store.recipe import Recipe
    from dlkit.training.run import train

    train(Recipe(arch="mlp", name="mlp-blobs", data={"source": "blobs"}, model={"hidden": [8]},
                 train={"epochs": 1}), repo, quiet=True)


@pytest.fixture
def fixed_width_arch():
    """An architecture that ignores num_classes (as a careless third-party one might)."""
    from dlkit.plugins import get_registry
    from dlkit.registry import ModelSpec

    def build(hparams, input_spec, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_spec["shape"])), 3))

    registry = get_registry()
    registry.add("model", ModelSpec("three-outputs", build, frozenset({"image", "tabular"}), plugin="test-distill"))
    yield "three-outputs"
    registry.remove_plugin("test-distill")


BAD = [
    ("teacher", ["cnn-digits", "--student", "mlp", "--temperature", "0"], None, "temperature"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--temperature", "-1"], None, "temperature"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--alpha", "2"], None, "alpha"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--epochs", "0"], None, "epochs"),
    ("teacher", ["mlp-digits", "--student", "mlp"], as_generator, "generation model"),
    ("teacher", ["nope", "--student", "mlp"], None, "no model 'nope'"),
    ("teacher", ["cnn-digits", "--student", "gan"], None, "gan"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--set", "hidden=wide"], None, "hidden"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--set", "data.seed=5"], None, "data split"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--name", "../x"], None, "invalid model name"),
    ("teacher", ["mlp-blobs", "--student", "cnn"], blobs_teacher, "does not accept tabular"),
    ("teacher", ["cnn-digits", "--student", "three-outputs"], None, "outputs 3 values"),
    ("teacher", ["cnn-digits", "--student", "mlp", "--set", "labelled=-1"], None, "labelled must be an integer"),
]


@pytest.mark.parametrize("args, prepare, message", [b[1:] for b in BAD],
                         ids=[" ".join(b[1][:1] + b[1][2:]) for b in BAD])
def test_bad_input_writes_nothing(trained, fixed_width_arch, args, prepare, message):
    if prepare:
        prepare(trained)
    before = tree(trained.root)
    result = dlkit("distill", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert tree(trained.root) == before
