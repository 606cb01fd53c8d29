"""Data sets: the digits split, CSV, .npz and image folders, each loaded and then trained on briefly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlkit.data.dataset import split_stratified
from dlkit.data.load import load_dataset
from dlkit.errors import InputError
from dlkit.store.recipe import Recipe
from dlkit.testing import check_dataset
from dlkit.training.run import train

QUICK = {"epochs": 2, "batch_size": 16, "patience": 0, "lr": 0.01}


def quick_train(repo, arch: str, source: str, model: dict, epochs: int = 2, **data):
    return train(Recipe(arch=arch, data={"source": source, **data}, model=model, train={**QUICK, "epochs": epochs}),
                 repo, quiet=True)


# -- digits and the split ---------------------------------------------------------------------------
def test_digits_split_is_stratified_deterministic_and_scaled():
    ds = check_dataset("digits")
    assert ds.input_spec["shape"] == [1, 8, 8] and ds.num_classes == 10
    assert sum(ds.describe()["sizes"].values()) == 1797
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() == 1.0
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    for part, fraction in (("test", 0.2), ("val", 0.1)):
        _, y = ds.split(part)
        assert np.array_equal(np.bincount(y, minlength=10), np.round(counts * fraction).astype(int)), part
    again, other = load_dataset("digits", {}, 0), load_dataset("digits", {}, 1)
    assert np.array_equal(again.x_train, ds.x_train) and np.array_equal(again.y_val, ds.y_val)
    assert not np.array_equal(other.y_test, ds.y_test)


def test_split_keeps_every_sample_once():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100) % 4
    parts = split_stratified(x, y, seed=3)
    seen = np.concatenate([parts[0], parts[2], parts[4]]).ravel()
    assert sorted(seen.tolist()) == list(range(100))
    for xs, ys in zip(parts[0::2], parts[1::2]):
        assert np.array_equal(xs.ravel().astype(int) % 4, ys)  # labels travel with their rows


@pytest.mark.parametrize("name", ["blobs", "waves"])
def test_synthetic_sets(name):
    ds = check_dataset(name)
    assert ds.kind == {"blobs": "tabular", "waves": "sequence"}[name]


# -- CSV --------------------------------------------------------------------------------------------
def tabular(n: int = 60, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated clusters: a few epochs of any classifier get them right."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0, 0.3, size=(n, 3)) + y[:, None] * np.array([4.0, -3.0, 2.0]) + 100.0
    return x, y


def write_csv(path: Path, header: list[str] | None, x: np.ndarray, labels: list, label_first: bool = False) -> str:
    lines = [",".join(header)] if header else []
    for row, label in zip(x, labels):
        cells = [f"{v:.4f}" for v in row]
        lines.append(",".join([str(label), *cells] if label_first else [*cells, str(label)]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_csv_with_header_string_labels_and_target_by_name(tmp_path, repo):
    x, y = tabular()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    path = write_csv(tmp_path / "flowers.csv", ["species", "a", "b", "c"], x, names, label_first=True)
    ds = load_dataset(path, {"target": "species"})
    assert ds.labels == ["setosa", "versicolor", "virginica"]
    assert ds.input_spec["features"] == ["a", "b", "c"] and ds.input_spec["shape"] == [3]
    assert sum(ds.describe()["sizes"].values()) == 60  # the header is not a sample
    for target in (0, -4, "0"):  # by index, negative index, index given as text
        assert load_dataset(path, {"target": target}).labels == ds.labels
    result = quick_train(repo, "mlp", path, {"hidden": [16]}, target="species")
    assert result.version.name == "mlp-flowers" and result.metrics["test_accuracy"] >= 0.9
    # The standardisation learnt from the training split travels with the weights: the stored
    # model takes raw feature values (here around 100) and evaluates to the same accuracy.
    from dlkit.infer.evaluate import evaluate

    assert evaluate(result.version)["accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert "standardize" in result.version.meta["input_spec"]["preprocessing"]


def test_csv_without_header(tmp_path):
    x, y = tabular()
    numeric = load_dataset(write_csv(tmp_path / "numeric.csv", None, x, y))
    assert numeric.labels == ["0", "1", "2"] and sum(numeric.describe()["sizes"].values()) == 60
    # Header-less with string labels, as in UCI's iris.data: the first row is data, not a header.
    words = load_dataset(write_csv(tmp_path / "iris.data.csv", None, x, np.array(["a", "b", "c"])[y]))
    assert words.labels == ["a", "b", "c"] and sum(words.describe()["sizes"].values()) == 60
    assert words.input_spec["features"] == ["column 1", "column 2", "column 3"]


def test_csv_target_out_of_range(tmp_path):
    x, y = tabular()
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "label"], x, y)
    with pytest.raises(InputError, match=r"data.target=7 is out of range \(4 columns\)"):
        load_dataset(path, {"target": 7})


def test_csv_ragged_row_names_the_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n5,z\n")
    with pytest.raises(InputError, match=r"ragged.csv:4: expected 3 columns, found 2"):
        load_dataset(str(path))


# -- .npz ---------------------------------------------------------------------------------------------
def test_npz_tabular_sequence_and_image(tmp_path, repo):
    rng = np.random.default_rng(0)
    y = np.arange(48) % 2
    arrays = {
        "tab": (rng.normal(size=(48, 5)) + y[:, None] * 3, "tabular", [5]),
        "seq": (rng.normal(size=(48, 6, 2)) + y[:, None, None] * 2, "sequence", [6, 2]),
        "img": (rng.uniform(size=(48, 3, 6, 6)) * (y[:, None, None, None] + 0.5), "image", [3, 6, 6]),
    }
    for stem, (x, kind, shape) in arrays.items():
        np.savez(tmp_path / f"{stem}.npz", x=x.astype(np.float64), y=y * 10)  # any float dtype, any label ints
        ds = load_dataset(str(tmp_path / f"{stem}.npz"))
        assert (ds.kind, ds.input_spec["shape"], ds.labels) == (kind, shape, ["0", "10"])
        assert ds.x_train.dtype == np.float32
    as_image = load_dataset(str(tmp_path / "seq.npz"), {"kind": "image"})
    assert as_image.input_spec["shape"] == [1, 6, 2]
    tabular = quick_train(repo, "mlp", str(tmp_path / "tab.npz"), {"hidden": [8]}).version
    assert tabular.meta["input_spec"]["kind"] == "tabular"
    assert quick_train(repo, "rnn", str(tmp_path / "seq.npz"), {"hidden": 8, "cell": "gru"}).version.version == 1
    assert quick_train(repo, "cnn", str(tmp_path / "img.npz"), {"channels": [4], "hidden": 0}).version.version == 1


def test_npz_refuses_missing_arrays_and_misshapen_labels(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"a.npz: missing array\(s\) x, y"):
        load_dataset(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2)), y=np.zeros((3,)))
    with pytest.raises(InputError, match=r"b.npz: y must have shape \(4,\)"):
        load_dataset(str(tmp_path / "b.npz"))


# -- image folders ----------------------------------------------------------------------------------
def image_folder(root: Path, mode: str, sizes: list[tuple[int, int]], per_class: int = 12) -> str:
    """Two classes a CNN tells apart at once: dark images with a bright left half, and the mirror."""
    from PIL import Image

    for label in ("left", "right"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            a = np.full((h, w), 20 + i, dtype=np.uint8)
            half = slice(0, w // 2) if label == "left" else slice(w // 2, w)
            a[:, half] = 230 - i
            im = Image.fromarray(a, "L")
            if mode == "RGB":
                im = Image.merge("RGB", (im, im.point(lambda v: v // 2), im))
            im.save(root / label / f"{i}.png")
    (root / "left" / "notes.txt").write_text("not an image: ignored")
    return str(root)


def test_image_folder_gray_resized_to_the_common_size(tmp_path, repo):
    path = image_folder(tmp_path / "gray", "L", [(10, 8), (10, 8), (7, 5)])
    ds = load_dataset(path)
    assert ds.labels == ["left", "right"] and ds.kind == "image"
    assert ds.input_spec["shape"] == [1, 8, 10]  # (C, H, W): the most common size, 10 wide, 8 high
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    resized = load_dataset(path, {"size": "6x4"})
    assert resized.input_spec["shape"] == [1, 4, 6]
    # 8 short epochs: batch norm's running statistics need a few steps before eval mode fits.
    # The cnn's defaults are now its 40-epoch recipe's (shifts, lr 3e-3, the last epoch kept):
    # this 8-epoch run on a few images trains without shifts, keeping its best epoch, as it did.
    result = train(Recipe(arch="cnn", data={"source": path}, model={"channels": [8], "hidden": 0},
                          train={**QUICK, "epochs": 8, "augment": 0, "restore_best": True}),
                   repo, quiet=True)
    assert result.metrics["test_accuracy"] >= 0.8


def test_image_folder_rgb(tmp_path, repo):
    path = image_folder(tmp_path / "colour", "RGB", [(8, 8)])
    ds = load_dataset(path)
    assert ds.input_spec["shape"] == [3, 8, 8]
    left = ds.x_train[ds.y_train == 0][0]
    assert np.allclose(left[1], np.floor(left[0] * 255 / 2) / 255, atol=1 / 255)  # the green channel is its own
    result = quick_train(repo, "mlp", path, {"hidden": [16]})
    assert result.version.meta["input_spec"]["shape"] == [3, 8, 8]


def test_image_folder_refuses_an_undecodable_image(tmp_path):
    path = image_folder(tmp_path / "imgs", "L", [(8, 8)], per_class=3)
    (tmp_path / "imgs" / "left" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken.png: cannot decode image"):
        load_dataset(path)
