"""The GAN plugin: real adversarial training on digits (tiny widths, 2 epochs), its quality metrics
and sample grids, resumable checkpoints, divergence detection, generator export with parity, and
``dlkit generate`` through onnxruntime without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dlkit.cli.group import cli
from dlkit.store.recipe import Recipe
from dlkit.store.repository import ModelRepository
from dlkit.training.run import train

TINY = {"latent": 8, "g_widths": [16, 8], "d_widths": [8, 16], "embed": 4}
FAST = {"epochs": 2, "batch_size": 64, "judge_epochs": 1, "samples": 200}
CELL = 8 * 4 + 1  # an 8x8 digit is drawn 4x larger, plus a 1-pixel gutter


def dlkit(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def gan_repo(tmp_path_factory) -> Path:
    """A repository with a tiny conditional GAN on digits, its auto judge, and the ONNX generator."""
    root = tmp_path_factory.mktemp("gan") / "models"
    train(Recipe(arch="gan", name="gan-digits", model=dict(TINY), train=dict(FAST)), ModelRepository(root), quiet=True)
    result = dlkit("export", "onnx", "gan-digits", "--repo", str(root), "--json")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def gans(gan_repo, tmp_path, monkeypatch) -> ModelRepository:
    """A writable copy of ``gan_repo``, set as $DLKIT_REPO."""
    root = tmp_path / "models"
    shutil.copytree(gan_repo, root)
    monkeypatch.setenv("DLKIT_REPO", str(root))
    return ModelRepository(root)


# -- the networks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 10), (3, 32, 32)])
@pytest.mark.parametrize("conditional,spectral_norm", [(True, False), (False, True)])
def test_networks_fit_the_image_shape(shape, conditional, spectral_norm):
    import dlkit_gan

    hparams = dict(dlkit_gan.DEFAULTS, **TINY, conditional=conditional, spectral_norm=spectral_norm)
    gan = dlkit_gan.build(hparams, {"shape": list(shape), "range": [0.0, 1.0]}, 3).eval()
    noise, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        images = gan(noise, labels if conditional else None)
        scores = gan.discriminator(gan.from_data_range(images), labels if conditional else None)
    assert images.shape == (5, *shape)
    assert images.min() >= 0 and images.max() <= 1  # the data's range, from tanh's [-1, 1]
    assert scores.shape == (5,)
    assert any("parametrizations" in k for k in gan.state_dict()) == spectral_norm


def test_frechet_distance_matches_the_closed_form():
    from dlkit_gan.quality import frechet_distance
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # a pure shift: |d|^2


def test_coverage_counts_confident_classes():
    from dlkit_gan.quality import coverage

    probs = np.array([[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.0, 0.05, 0.95], [0.0, 0.92, 0.08]])
    out = coverage(probs, requested=np.array([0, 1, 2, 2]))
    assert out["class_coverage"] == 3 and out["classes"] == 3
    assert out["confident_per_class"] == [1, 1, 1]
    assert out["mean_max_probability"] == pytest.approx((0.95 + 0.5 + 0.95 + 0.92) / 4)
    assert out["label_accuracy"] == pytest.approx(0.5)  # row 1 ties to class 0; row 3 is not a 2
    assert coverage(probs[:2])["class_coverage"] == 1


# -- training -----------------------------------------------------------------------------------------
def test_train_records_quality_and_sample_grids(gan_repo):
    repo = ModelRepository(gan_repo)
    version = repo.resolve("gan-digits")
    meta = version.meta
    assert (meta["arch"], meta["task"], meta["trainer"], meta["plugin"]) == ("gan", "generation", "gan", "gan")
    assert meta["hparams"]["latent"] == 8 and meta["hparams"]["conditional"] is True
    m = meta["metrics"]
    assert m["epochs"] == 2 and "test_accuracy" not in m
    assert m["judge"] == "gan-judge-digits:1" and m["quality_samples"] == 200
    assert m["frechet_distance"] > 0 and m["frechet_distance_untrained"] > 0
    assert m["frechet_ratio"] == pytest.approx(m["frechet_distance"] / m["frechet_distance_untrained"])
    assert 0 <= m["class_coverage"] <= m["classes"] == 10
    assert 0.1 <= m["mean_max_probability"] <= 1 and 0 <= m["label_accuracy"] <= 1
    assert sum(m["confident_per_class"]) <= 200
    # the judge is an ordinary classifier of the repository, trained on the same split
    judge = repo.resolve("gan-judge-digits:1").meta
    assert judge["task"] == "classification" and judge["arch"] == "cnn"
    assert judge["data"]["source"] == "digits" and judge["data"]["seed"] == meta["data"]["seed"]

    from PIL import Image

    with Image.open(version.path / "samples.png") as im:  # one row per class, 10 samples each
        assert im.size == (10 * CELL + 1, 10 * CELL + 1) and im.mode == "L"
    assert sorted(p.name for p in (version.path / "epochs").iterdir()) == ["epoch-0001.png", "epoch-0002.png"]
    lines = [json.loads(line) for line in (version.path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [1, 2] and {"d_loss", "g_loss", "d_real", "d_fake"} <= set(lines[0])
    assert (version.path / "curves.png").is_file()
    assert not (version.path / "checkpoint.safetensors").exists() and not (version.path / "recipe.json").exists()


def test_resume_continues_to_the_same_weights(repo):
    """A run killed after epoch 1 and resumed ends where an uninterrupted run ends; the judge is reused."""
    from dlkit.store.weights import load_tensors
    from dlkit.training.callbacks import Callback

    class Interrupt(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                raise KeyboardInterrupt

    recipe = {"arch": "gan", "model": dict(TINY), "train": {**FAST, "samples": 100}}
    straight = train(Recipe(name="straight", **recipe), repo, quiet=True).version
    with pytest.raises(KeyboardInterrupt):
        train(Recipe(name="resumed", **recipe), repo, quiet=True, callbacks=[Interrupt()])
    assert repo.versions("resumed") == []
    resumed = train(Recipe(name="resumed", **recipe), repo, resume=True, quiet=True).version

    a, b = load_tensors(straight.weights_path), load_tensors(resumed.weights_path)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert [json.loads(line)["epoch"] for line in (resumed.path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert repo.versions("gan-judge-digits") == [1]  # trained once, then found in the repository
    assert resumed.meta["metrics"]["judge"] == straight.meta["metrics"]["judge"] == "gan-judge-digits:1"


def test_collapsed_discriminator_stops_with_a_clear_message(repo):
    # A generator that cannot learn (lr 1e-9) against a fast discriminator: D wins outright.
    result = dlkit("train", "gan", "--name", "collapse", "--epochs", "20",
                   "--set", "g_widths=[8, 4]", "--set", "d_widths=[8, 16]", "--set", "latent=4",
                   "--set", "lr=1e-9", "--set", "d_lr=0.01", "--set", "collapse_steps=20",
                   "--set", "collapse_loss=0.05", "--set", "judge=\"none\"")
    assert result.exit_code == 1, result.output
    message = result.stderr.strip().splitlines()[-1]  # after the progress lines of the epochs it ran
    assert message.startswith("error: GAN training collapsed") and "discriminator" in message
    assert "Traceback" not in result.output
    assert repo.versions("collapse") == []


def test_image_folder_rgb_odd_size(repo, tmp_path):
    """User image folders: RGB, 12x10 pixels (cropped from the generator's 12x12), judge trained on them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, colour in (("red", 0), ("blue", 2)):
        (tmp_path / "shapes" / cls).mkdir(parents=True)
        for i in range(40):
            a = (rng.random((12, 10, 3)) * 60).astype(np.uint8)
            a[2 + i % 4:9, 2:8, colour] = 230
            Image.fromarray(a).save(tmp_path / "shapes" / cls / f"{i}.png")
    result = dlkit("train", "gan", "--data", str(tmp_path / "shapes"), "--epochs", "1", "--batch-size", "16",
                   "--set", "g_widths=[8, 4]", "--set", "d_widths=[4, 8]", "--set", "judge_epochs=1",
                   "--set", "samples=50", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    version = repo.resolve(out["model"])
    assert version.meta["input_spec"]["shape"] == [3, 12, 10]
    assert out["metrics"]["classes"] == 2 and out["metrics"]["judge"] == "gan-judge-shapes:1"
    from PIL import Image as PILImage

    with PILImage.open(version.path / "samples.png") as im:
        # 2 rows (classes) of 10; 12x10 images are drawn twice as large
        assert im.mode == "RGB" and im.size == (10 * (2 * 10 + 1) + 1, 2 * (2 * 12 + 1) + 1)


# -- export and generate ------------------------------------------------------------------------------
def test_export_is_the_generator_with_parity(gans):
    import onnx
    import onnxruntime as ort

    from dlkit.training.build import load_model

    version = gans.resolve("gan-digits")
    model = onnx.load(str(version.onnx_path))
    assert [i.name for i in model.graph.input] == ["noise", "label"]
    assert [o.name for o in model.graph.output] == ["image"]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["output_range"]) == [0.0, 1.0]

    gan, _ = load_model(version)
    noise = torch.randn(13, 8, generator=torch.Generator().manual_seed(5))  # another batch size than exported
    labels = torch.arange(13) % 10
    with torch.no_grad():
        expected = gan(noise, labels).numpy()
    session = ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["image"], {"noise": noise.numpy(), "label": labels.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


GENERATE = textwrap.dedent("""
    import json, sys
    import dlkit_gan  # the plugin module itself must not pull torch in
    from dlkit.cli.group import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"torch": "torch" in sys.modules, "exit": code}), file=sys.stderr)
""")


def run_generate(*args: str, env_repo: Path) -> tuple[dict, dict]:
    """``dlkit generate`` in a fresh interpreter: (its JSON output, whether torch got imported)."""
    proc = subprocess.run([sys.executable, "-c", GENERATE, "generate", *args, "--repo", str(env_repo), "--json"],
                          capture_output=True, text=True, timeout=120)
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status["exit"] in (0, None), proc.stderr
    return json.loads(proc.stdout), status


def test_generate_runs_the_onnx_generator_without_torch(gans, tmp_path):
    from PIL import Image

    from dlkit.training.build import load_model

    out, status = run_generate("gan-digits", "-n", "20", "--label", "3", "--seed", "7", "--out",
                               str(tmp_path / "grid.png"), "--npy", str(tmp_path / "x.npy"), env_repo=gans.root)
    assert status["torch"] is False
    assert out["n"] == 20 and out["label"] == "3" and out["shape"] == [20, 1, 8, 8] and out["range"] == [0.0, 1.0]
    assert out["labels"] == ["3"] * 20
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (20, 1, 8, 8) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (5 * CELL + 1, 4 * CELL + 1)  # 20 images: a 5 x 4 grid

    # the documented noise (numpy's default_rng(seed) normals), through torch, gives the same images
    gan, _ = load_model(gans.resolve("gan-digits"))
    noise = np.random.default_rng(7).standard_normal((20, 8), dtype=np.float32)
    with torch.no_grad():
        expected = gan(torch.from_numpy(noise), torch.full((20,), 3)).numpy()
    np.testing.assert_allclose(images, expected, atol=1e-5)

    # every class in turn, one row each, when no label is asked for
    out, _ = run_generate("gan-digits", "-n", "30", "--out", str(tmp_path / "all.png"), env_repo=gans.root)
    assert out["labels"] == [str(c) for c in range(10) for _ in range(3)] and out["npy"] is None
    with Image.open(tmp_path / "all.png") as im:
        assert im.size == (3 * CELL + 1, 10 * CELL + 1)


# -- bad input: one clear line, exit 2, nothing left in the repository --------------------------------
def test_bad_training_input_is_refused_cleanly(repo, tmp_path):
    csv = tmp_path / "some.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30)))
    cases = [
        (["--data", str(csv)], "does not accept tabular data"),
        (["--set", "latent=0"], "latent must be a positive int"),
        (["--set", "g_widths=[]"], "g_widths"),
        (["--set", "loss=\"wasserstein\""], "train.loss must be nonsaturating or hinge"),
        (["--set", "judge=\"no-such-model\""], "no model 'no-such-model'"),
    ]
    for args, expected in cases:
        result = dlkit("train", "gan", "--epochs", "1", *args)
        assert result.exit_code == 2, (args, result.output)
        message = result.stderr.strip()
        assert expected in message and "\n" not in message and "Traceback" not in result.output, args
        assert repo.names() == [] and not any(".staging" in p for p in tree(repo.root)), args


def test_bad_generate_input_is_refused_cleanly(gans, tmp_path):
    cases = [
        (["gan-judge-digits"], "is a classification model"),
        (["gan-digits", "--label", "12"], "--label 12: model gan-digits:1 has 10 classes"),
        (["gan-digits", "--label", "seven"], "--label seven"),
        (["gan-digits", "-n", "0"], "-n must be at least 1"),
    ]
    for args, expected in cases:
        result = dlkit("generate", *args, "--out", str(tmp_path / "x.png"))
        assert result.exit_code == 2, (args, result.output)
        message = result.stderr.strip()
        assert expected in message and "\n" not in message, args
    assert not (tmp_path / "x.png").exists()
    gans.resolve("gan-digits").onnx_path.unlink()
    result = dlkit("generate", "gan-digits")
    assert result.exit_code == 2 and "dlkit export onnx gan-digits:1" in result.stderr


def test_unconditional_gan_exports_noise_only(repo, tmp_path):
    train(Recipe(arch="gan", name="free", model=dict(TINY, conditional=False),
                 train=dict(FAST, epochs=1, judge="none")), repo, quiet=True)
    version = repo.resolve("free")
    assert "frechet_distance" not in version.meta["metrics"]  # judge = none: no quality metrics
    assert repo.names() == ["free"]  # and no judge trained
    from PIL import Image

    with Image.open(version.path / "samples.png") as im:  # 8 x 8 samples, no class rows
        assert im.size == (8 * CELL + 1, 8 * CELL + 1)
    import onnx

    assert dlkit("export", "onnx", "free", "--json").exit_code == 0
    assert [i.name for i in onnx.load(str(version.onnx_path)).graph.input] == ["noise"]
    result = dlkit("generate", "free", "--label", "3", "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "is unconditional" in result.stderr
    out = json.loads(dlkit("generate", "free", "-n", "9", "--out", str(tmp_path / "x.png"), "--json").stdout)
    assert out["shape"] == [9, 1, 8, 8] and out["label"] is None and "labels" not in out
    with Image.open(tmp_path / "x.png") as im:
        assert im.size == (3 * CELL + 1, 3 * CELL + 1)
