"""dlkit's clustering (autoencoder + k-means) against scikit-learn's KMeans, side by side.

    python benchmarks/bench_cluster.py [--seeds 5] [--epochs 60] [--data digits,wine] [--set KEY=V ...]

On each data set (labels hidden from training, used only to score), for each seed: dlkit's
``autoencoder`` trained through ``dlkit.train`` with that seed, KMeans on the standardised raw
features, and KMeans on PCA to the autoencoder's embedding size; same K (the number of classes),
same split (the data set's test split is scored), n_init=10. Then, on the first seed's model: the
exported graph against the torch encoder + scikit-learn's ``KMeans.predict`` (cluster ids on
every test row), and ``dlkit quantize --method dynamic`` (int8): size, latency at batch 1 and 64,
cluster agreement with the float graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import numpy as np

CLASSES = {"digits": 10, "wine": 3}


def baselines(ds, k: int, dims: int, seed: int) -> dict:
    """ARI and NMI on the test split of KMeans on standardised features and on PCA to ``dims``."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.preprocessing import StandardScaler

    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)  # noqa: E731
    scaler = StandardScaler().fit(flat(ds.x_train))
    train, test = scaler.transform(flat(ds.x_train)), scaler.transform(flat(ds.x_test))
    pca = PCA(n_components=dims, random_state=seed).fit(train)
    out = {}
    for name, (a, b) in {"kmeans": (train, test), "pca+kmeans": (pca.transform(train), pca.transform(test))}.items():
        pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(a).predict(b)
        out[name] = {"ari": adjusted_rand_score(ds.y_test, pred), "nmi": normalized_mutual_info_score(ds.y_test, pred)}
    return out


def graph_vs_sklearn(version, ds, seed: int, n_init: int) -> dict:
    """Cluster ids of the exported graph against torch embeddings + a refitted KMeans's predict."""
    import torch

    from dlkit import Session, load_model
    from dlkit_cluster.kmeans import fit_kmeans
    from dlkit_cluster.model import ClusterAutoencoder
    from dlkit_cluster.trainer import embeddings

    module, _ = load_model(version)
    ae = next(m for m in module.modules() if isinstance(m, ClusterAutoencoder))
    km = fit_kmeans(embeddings(ae, ds.x_train, ds.input_spec), ae.clusters, seed, n_init)
    same_centroids = bool(np.allclose(km.cluster_centers_, ae.centroids.numpy(), atol=1e-5))
    by_sklearn = km.predict(embeddings(ae, ds.x_test, ds.input_spec).astype(np.float64))
    session = Session(version.onnx_path, "cpu")
    by_graph = session.run({"input": ds.x_test.astype(np.float32)})["cluster"]
    with torch.inference_mode():
        by_torch = module(torch.from_numpy(ds.x_test.astype(np.float32))).argmin(1).numpy()
    return {"rows": len(ds.x_test), "graph_equals_sklearn": int((by_graph == by_sklearn).sum()),
            "graph_equals_torch": int((by_graph == by_torch).sum()), "same_centroids": same_centroids}


def run(data: str, seeds: int, epochs: int, sets: list[str], repo) -> dict:
    from dlkit import evaluation_data, train
    from dlkit.testing import run_cli

    k = CLASSES[data]
    rows = []
    first = None
    for seed in range(seeds):
        result = train("autoencoder", repo, sets=[f"clusters={k}", *sets], data=data, seed=seed, epochs=epochs,
                       name=f"bench-{data}", quiet=True)
        m = result.metrics
        ds = evaluation_data(result.version)
        dims = int(result.version.meta["hparams"]["embedding"])
        base = baselines(ds, k, dims, seed)
        rows.append({"seed": seed, "dlkit": {"ari": m["test_ari"], "nmi": m["test_nmi"]}, **base,
                     "train_seconds": m["train_seconds"]})
        print(f"{data} seed {seed}: " + "  ".join(f"{n} ARI {r['ari']:.3f} NMI {r['nmi']:.3f}"
                                                  for n, r in rows[-1].items() if isinstance(r, dict)), file=sys.stderr)
        first = first or (result.version, ds, seed)
    version, ds, seed = first
    run_cli("export", "onnx", version.ref, "--repo", str(repo.root), "--json")
    parity = graph_vs_sklearn(version, ds, seed, int(version.meta["train"]["n_init"]))
    quant = run_cli("quantize", version.ref, "--method", "dynamic", "--repo", str(repo.root), "--json",
                    expect=None)
    table = json.loads(quant.stdout)["table"] if quant.stdout.strip() else []
    return {"data": data, "clusters": k, "seeds": rows, "export": parity,
            "int8": [{key: r.get(key) for key in ("candidate", "size_bytes", "latency_b1_ms", "latency_b64_ms",
                                                   "test_agreement", "val_agreement", "test_silhouette", "passed")}
                     for r in table]}


def summary(report: dict) -> str:
    """A markdown table: mean and standard deviation over the seeds."""
    lines = ["| data | K | method | ARI (mean ± sd) | NMI (mean ± sd) |", "|---|---|---|---|---|"]
    for r in report["results"]:
        for method in ("dlkit", "kmeans", "pca+kmeans"):
            ari = np.array([s[method]["ari"] for s in r["seeds"]])
            nmi = np.array([s[method]["nmi"] for s in r["seeds"]])
            lines.append(f"| {r['data']} | {r['clusters']} | {method} | {ari.mean():.3f} ± {ari.std():.3f} | "
                         f"{nmi.mean():.3f} ± {nmi.std():.3f} |")
    lines += ["", "| data | test rows | graph = torch + sklearn predict | int8 size (float32) | "
                  "int8 latency b1 / b64 ms (float32) | int8 test agreement |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        e, q = r["export"], {row["candidate"]: row for row in r["int8"]}
        f32, i8 = q.get("float32", {}), next((v for n, v in q.items() if n != "float32"), {})
        lines.append(f"| {r['data']} | {e['rows']} | {e['graph_equals_sklearn']}/{e['rows']} | "
                     f"{i8.get('size_bytes')} ({f32.get('size_bytes')}) | "
                     f"{i8.get('latency_b1_ms', 0):.4f} / {i8.get('latency_b64_ms', 0):.4f} "
                     f"({f32.get('latency_b1_ms', 0):.4f} / {f32.get('latency_b64_ms', 0):.4f}) | "
                     f"{i8.get('test_agreement')} |")
    return "\n".join(lines)


def main() -> None:
    from dlkit import ModelRepository

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--data", default="digits,wine")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for the autoencoder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlkit-bench-cluster-") as tmp:
        repo = ModelRepository(tmp)
        report = {"results": [run(d, args.seeds, args.epochs, args.sets, repo) for d in args.data.split(",")],
                  "command": " ".join(sys.argv)}
    print(json.dumps(report, indent=1) if args.json else summary(report))


if __name__ == "__main__":
    main()
