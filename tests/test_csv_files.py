"""CSV files read without silent guesses: scikit-learn's own bundled files, reordered, re-encoded."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dlkit.data.load import load_dataset
from dlkit.errors import InputError
from dlkit.testing import run_cli

SKLEARN_DATA = Path(__import__("sklearn.datasets", fromlist=["x"]).__file__).parent / "data"
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_NAMES = ["setosa", "versicolor", "virginica"]


def sklearn_rows(name: str) -> list[list[str]]:
    """The rows of a bundled file without its count line (the last column is the class 0, 1, 2)."""
    with open(SKLEARN_DATA / name, newline="") as f:
        return list(csv.reader(f))[1:]


def iris(path: Path, *, first: bool = False, header: str = "species", delimiter: str = ",",
         bom: bool = False, names: bool = True) -> str:
    lines = []
    for row in sklearn_rows("iris.csv"):
        label = IRIS_NAMES[int(row[-1])] if names else row[-1]
        lines.append([label, *row[:-1]] if first else [*row[:-1], label])
    head = [header, *IRIS_FEATURES] if first else [*IRIS_FEATURES, header]
    text = "\n".join(delimiter.join(r) for r in [head, *lines]) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return str(path)


def test_sklearn_bundled_iris_csv_reads_its_count_line():
    ds = load_dataset(str(SKLEARN_DATA / "iris.csv"))
    assert ds.labels == IRIS_NAMES and ds.input_spec["shape"] == [4]
    assert sum(ds.describe()["sizes"].values()) == 150  # the count line is not a sample
    assert ds.input_spec["target"] == "target"


def test_label_first_with_a_target_name_is_found(tmp_path):
    ds = load_dataset(iris(tmp_path / "iris.csv", first=True, header="Class"))
    assert ds.input_spec["target"] == "Class" and ds.labels == IRIS_NAMES
    assert ds.input_spec["features"] == IRIS_FEATURES


def test_label_first_without_a_target_name_says_how_to_pick_it(tmp_path):
    # Words in the first column: the error names the column to pass as data.target.
    with pytest.raises(InputError, match=r"column 1 \('species'\) is not a number: 'setosa'.*"
                                         r"--set data.target=species"):
        load_dataset(iris(tmp_path / "iris.csv", first=True))
    # Numbers in the first column: the last feature (petal_width, fractional) is refused as a class.
    with pytest.raises(InputError, match=r"'petal_width' holds fractional numbers.*--set data.target="):
        load_dataset(iris(tmp_path / "iris2.csv", first=True, names=False))


def test_wine_with_the_class_first_refuses_a_many_valued_last_column(tmp_path):
    rows = sklearn_rows("wine_data.csv")
    path = tmp_path / "wine.csv"
    path.write_text("\n".join(",".join([r[-1], *r[:-1]]) for r in rows) + "\n")
    with pytest.raises(InputError, match=r"wine.csv: target column 'column 14' has \d+ different values in 178 "
                                         r"rows.*--set data.target=COLUMN"):
        load_dataset(str(path))
    ds = load_dataset(str(path), {"target": 0})
    assert ds.labels == ["0", "1", "2"] and ds.input_spec["shape"] == [13]


def test_bom_semicolons_and_tsv(tmp_path):
    bom = load_dataset(iris(tmp_path / "excel.csv", bom=True), {"target": "species"})
    assert bom.input_spec["features"][0] == "sepal_length"  # no invisible \ufeff in the first name
    semi = load_dataset(iris(tmp_path / "semi.csv", delimiter=";", header="label"))
    tsv = load_dataset(iris(tmp_path / "tab.tsv", delimiter="\t", header="label"))
    for ds in (semi, tsv):
        assert ds.labels == IRIS_NAMES and ds.input_spec["shape"] == [4] and ds.input_spec["target"] == "label"


def test_missing_cells_error_drop_or_mean(tmp_path):
    lines = Path(iris(tmp_path / "full.csv", header="label")).read_text().splitlines()
    lines[5] = ",".join(["", *lines[5].split(",")[1:]])  # file line 6, column 1 empty
    lines[9] = lines[9].replace(lines[9].split(",")[2], "NA", 1)
    path = tmp_path / "holes.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"holes.csv:6: column 1 \('sepal_length'\) is missing \(''\); "
                                         r"set data.missing=drop .* data.missing=mean"):
        load_dataset(str(path))
    dropped = load_dataset(str(path), {"missing": "drop"})
    assert sum(dropped.describe()["sizes"].values()) == 148
    filled = load_dataset(str(path), {"missing": "mean"})
    assert sum(filled.describe()["sizes"].values()) == 150
    with pytest.raises(InputError, match=r"data.missing must be one of error, drop, mean, got 'zero'"):
        load_dataset(str(path), {"missing": "zero"})


def test_a_class_of_one_row_is_refused(tmp_path):
    path = Path(iris(tmp_path / "odd.csv", header="label"))
    path.write_text(path.read_text() + "5.0,3.0,1.5,0.3,unique-flower\n")
    with pytest.raises(InputError, match=r"class 'unique-flower' of target 'label' has only one row"):
        load_dataset(str(path))


def test_train_prints_the_target_it_chose(repo, tmp_path):
    path = iris(tmp_path / "iris.csv", first=True, header="label")
    out = run_cli("train", "mlp", "--data", path, "--epochs", "2", "--set", "model.hidden=[8]")
    assert "target: label, 3 classes, 150 rows, 4 features" in out.stderr
    assert "target: label, 3 classes, 150 rows, 4 features" in out.stdout.splitlines()[0]


def test_a_numeric_target_is_read_as_numbers_under_task_regression(tmp_path):
    path = iris(tmp_path / "iris.csv", header="species", names=False)  # species as 0, 1, 2: all numbers
    with pytest.raises(InputError, match=r"'petal_width' holds fractional numbers.*--set task=regression"):
        load_dataset(path, {"target": "petal_width"})
    ds = load_dataset(path, {"target": "petal_width", "targets": "values"})
    assert ds.targets == "values" and ds.input_spec["target"] == "petal_width"
    with pytest.raises(InputError, match=r"target column 'species' holds 'setosa': regression needs numbers"):
        load_dataset(iris(tmp_path / "named.csv", header="species"), {"target": "species", "targets": "values"})
