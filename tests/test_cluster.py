"""Clustering (plugins/dlkit_cluster): the task's numpy metrics against scikit-learn's, an
autoencoder trained through `dlkit train`, k-means centroids in the weights and in the ONNX graph,
evaluate/predict/serve/quantize on that graph, resume, data without labels, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dlkit import Callback, ModelRepository, Session, evaluation_data, get_registry, load_model, load_tensors, train
from dlkit.testing import check_task, run_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))
QUICK = {"epochs": 12, "patience": 0}


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """An autoencoder on wine with K=3, exported: (repository, version)."""
    repo = ModelRepository(tmp_path_factory.mktemp("cluster") / "models")
    version = train("autoencoder", repo, sets=["clusters=3"], data="wine", quiet=True, **QUICK).version
    run_cli("export", "onnx", version.ref, "--repo", str(repo.root), "--json")
    return repo, version


def files_in(repo_root: Path) -> list[str]:
    return sorted(str(p.relative_to(repo_root)) for p in repo_root.rglob("*")) if repo_root.exists() else []


# -- the task's metrics, in numpy -------------------------------------------------------------------
def test_ari_and_nmi_equal_scikit_learn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from dlkit_cluster.task import adjusted_rand_index, normalized_mutual_info

    rng = np.random.default_rng(0)
    for n, a, b in [(50, 3, 3), (200, 10, 4), (7, 2, 5), (30, 1, 3)]:
        y, c = rng.integers(0, a, n), rng.integers(0, b, n)
        c[: n // 2] = y[: n // 2]  # partly agreeing, so the scores are not all near 0
        assert adjusted_rand_index(y, c) == pytest.approx(adjusted_rand_score(y, c), abs=1e-12)
        assert normalized_mutual_info(y, c) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-12)


def test_simplified_silhouette_and_metrics_keys():
    from dlkit_cluster.task import metrics, simplified_silhouette

    d = np.array([[1.0, 3.0], [4.0, 2.0], [0.0, 0.0]])
    # (3-1)/3, (4-2)/4 and 0 for a sample at both centroids
    assert simplified_silhouette(d) == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    unlabelled = metrics(d, np.full(3, -1))
    assert set(unlabelled) == {"loss", "silhouette"} and unlabelled["loss"] == pytest.approx((1 + 4 + 0) / 3)
    assert {"ari", "nmi"} <= set(metrics(d, np.array([0, 1, 1])))


# -- train, store, export ---------------------------------------------------------------------------
def test_trained_version_stores_centroids_and_scores(wine):
    repo, version = wine
    meta = version.meta
    assert meta["task"] == "clustering" and meta["arch"] == "autoencoder" and meta["plugin"] == "cluster"
    m = meta["metrics"]
    assert m["clusters"] == 3
    for key in ("test_silhouette", "val_silhouette", "test_ari", "test_nmi", "test_loss"):
        assert isinstance(m[key], float), key
    assert m["test_ari"] > 0.5  # wine's cultivars are well separated; chance is 0
    tensors = load_tensors(version.weights_path)
    (key,) = [k for k in tensors if k.endswith("centroids")]
    assert tuple(tensors[key].shape) == (3, meta["hparams"]["embedding"])


def test_graph_gives_cluster_and_distances_like_torch_and_sklearn(wine):
    import torch

    from dlkit_cluster.kmeans import fit_kmeans
    from dlkit_cluster.model import ClusterAutoencoder
    from dlkit_cluster.trainer import embeddings

    repo, version = wine
    ds = evaluation_data(version)
    session = Session(version.onnx_path, "cpu")
    assert [o.name for o in session.outputs] == ["cluster", "distances"]
    out = session.run({"input": ds.x_test})
    assert out["cluster"].dtype == np.int64 and out["distances"].shape == (len(ds.x_test), 3)
    assert (out["cluster"] == out["distances"].argmin(1)).all()
    module, _ = load_model(version)
    ae = next(m for m in module.modules() if isinstance(m, ClusterAutoencoder))
    km = fit_kmeans(embeddings(ae, ds.x_train, ds.input_spec), 3, version.meta["seed"], 10)
    np.testing.assert_allclose(km.cluster_centers_, ae.centroids.numpy(), atol=1e-5)
    assert (km.predict(embeddings(ae, ds.x_test, ds.input_spec).astype(np.float64)) == out["cluster"]).all()
    with torch.inference_mode():
        np.testing.assert_allclose(module(torch.from_numpy(ds.x_test)).numpy(), out["distances"], rtol=1e-4,
                                   atol=1e-4)
    assert session.metadata["clusters"] == 3 and session.metadata["labels"] == ["0", "1", "2"]


def test_evaluate_reports_the_same_metrics_through_torch_and_onnx(wine):
    repo, version = wine
    by = {rt: run_cli("evaluate", version.ref, "--runtime", rt, "--repo", str(repo.root), "--json").json()
          for rt in ("torch", "onnx")}
    for key in ("silhouette", "ari", "nmi"):
        assert by["torch"][key] == pytest.approx(by["onnx"][key], abs=1e-4)
    assert by["onnx"]["ari"] == pytest.approx(version.meta["metrics"]["test_ari"], abs=1e-9)


def test_predict_prints_cluster_and_distance(wine, tmp_path):
    repo, version = wine
    ds = evaluation_data(version)
    rows = tmp_path / "rows.npy"
    np.save(rows, ds.x_test[:4])
    shown = run_cli("predict", version.ref, str(rows), "--repo", str(repo.root), "--json").json()["predictions"]
    expected = Session(version.onnx_path, "cpu").run({"input": ds.x_test[:4]})
    assert [p["cluster"] for p in shown] == expected["cluster"].tolist()
    for p, d in zip(shown, expected["distances"]):
        assert p["distance"] == pytest.approx(float(d.min()), rel=1e-6)
    human = run_cli("predict", version.ref, str(rows), "--repo", str(repo.root)).stdout
    assert "cluster" in human and "distance" in human


def test_serve_answers_with_cluster_ids_without_torch(wine):
    from serve_helpers import ServerProcess

    repo, version = wine
    ds = evaluation_data(version)
    server = ServerProcess(repo.root, "--models", version.name)
    try:
        body = {"inputs": [{"name": "input", "shape": [2, 13], "datatype": "FP32",
                            "data": ds.x_test[:2].ravel().tolist()}]}
        request = urllib.request.Request(f"{server.url}/v2/models/{version.name}/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
    finally:
        server.stop()
    assert outputs["cluster"]["datatype"] == "INT64" and outputs["distances"]["shape"] == [2, 3]
    expected = Session(version.onnx_path, "cpu").run({"input": ds.x_test[:2]})["cluster"]
    assert outputs["cluster"]["data"] == expected.tolist()
    assert any("torch imported: False" in line for line in server.lines)


def test_int8_quantization_keeps_the_clusters(wine):
    repo, version = wine
    # wine's validation split has 18 rows: one row changing cluster is 5.6 points, so allow one
    report = run_cli("quantize", version.ref, "--method", "dynamic", "--tolerance", "6", "--repo", str(repo.root),
                     "--json").json()
    assert report["quality"] == "cluster agreement and silhouette" and report["drop_unit"] == "points"
    chosen = next(r for r in report["table"] if r["chosen"])
    assert chosen["val_agreement"] >= 17 / 18 and chosen["drop"] <= 6
    new = repo.resolve(report["model"])
    assert new.meta["task"] == "clustering" and "test_agreement" in new.meta["metrics"]
    rows = repo.root / "rows.npy"
    np.save(rows, evaluation_data(version).x_test)
    shown = run_cli("predict", new.ref, str(rows), "--repo", str(repo.root), "--json").json()["predictions"]
    assert np.mean([p["cluster"] for p in shown] == Session(version.onnx_path, "cpu").run(
        {"input": evaluation_data(version).x_test})["cluster"]) >= 0.95


def test_clustering_conforms(dlkit_repo):
    """dlkit.testing.check_task, extended to tasks trained without targets."""
    version = check_task("clustering", dlkit_repo)
    assert version.meta["arch"] == "autoencoder"


# -- K, resume, data without labels -------------------------------------------------------------------
def test_clusters_auto_picks_k_by_silhouette_and_prints_it(tmp_path):
    result = run_cli("train", "autoencoder", "--data", "blobs", "--epochs", "8", "--repo", str(tmp_path / "m"),
                     "--json")
    assert "clusters=auto: silhouette" in result.stderr
    assert result.json()["metrics"]["clusters"] == 3  # blobs has three well separated groups
    assert "-> K=3" in result.stderr


class StopAt(Callback):
    """Interrupts training as epoch ``n`` starts, after epoch ``n - 1``'s checkpoint (as a kill would)."""

    def __init__(self, n):
        self.n = n

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.n:
            raise KeyboardInterrupt


def test_resume_continues_bit_identically(tmp_path):
    repo = ModelRepository(tmp_path / "m")
    args = dict(sets=["clusters=3"], data="wine", quiet=True, epochs=4, patience=0)
    whole = train("autoencoder", repo, name="whole", **args).version
    with pytest.raises(KeyboardInterrupt):
        train("autoencoder", repo, name="halves", callbacks=[StopAt(3)], **args)
    resumed = train("autoencoder", repo, name="halves", resume=True, **args).version
    a, b = load_tensors(whole.weights_path), load_tensors(resumed.weights_path)
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
    assert resumed.meta["metrics"]["test_silhouette"] == whole.meta["metrics"]["test_silhouette"]


def write_rows(path: Path, n: int, header: str = "a,b,c\n") -> Path:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [8, 8, 0], [0, 8, 8]])
    x = centres[np.arange(n) % 3] + rng.normal(0, 1, (n, 3))
    path.write_text(header + "".join(",".join(f"{v:.4f}" for v in row) + "\n" for row in x))
    return path


def test_a_csv_with_no_label_column_trains_with_data_targets_none(tmp_path):
    rows = write_rows(tmp_path / "rows.csv", 60)
    repo = tmp_path / "m"
    out = run_cli("train", "autoencoder", "--data", str(rows), "--set", "data.targets=none", "--set", "clusters=3",
                  "--epochs", "5", "--repo", str(repo), "--json").json()
    assert out["metrics"]["clusters"] == 3 and "test_ari" not in out["metrics"]
    version = ModelRepository(repo).resolve(out["model"])
    assert version.meta["input_spec"]["features"] == ["a", "b", "c"] and version.meta["labels"] == []
    run_cli("export", "onnx", version.ref, "--repo", str(repo), "--json")
    shown = run_cli("predict", version.ref, str(rows), "--repo", str(repo), "--json").json()["predictions"]
    assert len(shown) == 60 and {p["cluster"] for p in shown} <= {0, 1, 2}
    assert "silhouette" in run_cli("evaluate", version.ref, "--repo", str(repo), "--json").json()


# -- bad input: one line, exit 2, nothing written ----------------------------------------------------
def cli_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlkit", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("case", ["no-numeric", "k-too-large", "auto-few-rows", "classify-unlabelled", "mlp"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    repo = tmp_path / "m"
    if case == "no-numeric":
        data = tmp_path / "names.csv"
        data.write_text("name,city\nann,oslo\nbob,rome\n" * 5)
        args = ["autoencoder", "--set", "data.targets=none", "--set", "clusters=2"]
        want = "no numeric column"
    elif case == "k-too-large":
        data = write_rows(tmp_path / "rows.csv", 20)
        args = ["autoencoder", "--set", "data.targets=none", "--set", "clusters=50"]
        want = "clusters=50 is larger than the 20 rows"
    elif case == "auto-few-rows":
        data = write_rows(tmp_path / "rows.csv", 9)
        args = ["autoencoder", "--set", "data.targets=none", "--set", "clusters=auto"]
        want = "clusters=auto needs at least 10 rows"
    elif case == "classify-unlabelled":
        data = write_rows(tmp_path / "rows.csv", 30)
        args = ["mlp", "--set", "data.targets=none"]
        want = "trains on targets, and data.targets=none gives none"
    else:
        data = write_rows(tmp_path / "rows.csv", 30)
        args = ["mlp", "--set", "task=clustering"]
        want = "architectures that do clustering: autoencoder"
    proc = cli_subprocess("train", *args, "--data", str(data), "--epochs", "1", "--repo", str(repo))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not [f for f in files_in(repo) if not f.endswith((".staging", ".lock"))], files_in(repo)


def test_registered_by_a_plugin_like_any_third_party():
    registry = get_registry()
    assert registry.task("clustering").plugin == "cluster" and registry.model("autoencoder").plugin == "cluster"
    assert "clustering" not in registry.model("mlp").tasks  # the core's architectures are untouched
