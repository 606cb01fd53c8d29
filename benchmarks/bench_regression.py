"""Regression side by side: dlkit's mlp against scikit-learn's Ridge and HistGradientBoostingRegressor
on the same splits of the bundled diabetes data (test R² and RMSE, several split seeds).

    python benchmarks/bench_regression.py [--seeds 0,1,2] [--epochs 200] [--threads 1]

Every model sees the same training rows (dlkit's train split; the scikit-learn models get train
and validation rows together, since they do not early-stop on them) and is scored on the same
test rows. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

# Small tabular data: a narrow network, strong weight decay, patient early stopping.
MLP_SETTINGS = ["lr=0.003", "patience=30", "hidden=[32]", "dropout=0.2", "weight_decay=0.1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV

    from dlkit import ModelRepository, load_dataset, train
    from dlkit.tasks.regression import metrics

    torch.set_num_threads(args.threads)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        ds = load_dataset("diabetes", {}, seed)
        x_fit = np.concatenate([ds.x_train, ds.x_val])
        y_fit = np.concatenate([ds.y_train, ds.y_val]).ravel()
        result = {"seed": seed}
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            trained = train("mlp", ModelRepository(tmp), data="diabetes", quiet=True, epochs=args.epochs,
                            sets=[f"data.seed={seed}", *MLP_SETTINGS])
            result["dlkit mlp"] = (trained.metrics["test_r2"], trained.metrics["test_rmse"],
                                   time.perf_counter() - started)
        for name, model in (("Ridge", RidgeCV(alphas=np.logspace(-3, 3, 13))),
                            ("HistGradientBoosting", HistGradientBoostingRegressor(random_state=seed))):
            started = time.perf_counter()
            model.fit(x_fit, y_fit)
            m = metrics(model.predict(ds.x_test), ds.y_test)
            result[name] = (m["r2"], m["rmse"], time.perf_counter() - started)
        rows.append(result)
        print(f"seed {seed}: " + ", ".join(f"{k} R2 {v[0]:.3f}" for k, v in result.items() if k != "seed"),
              file=sys.stderr)

    names = ["dlkit mlp", "Ridge", "HistGradientBoosting"]
    print("| model | test R² (mean) | R² per seed | test RMSE (mean) | fit s (mean) |")
    print("|---|---|---|---|---|")
    for name in names:
        r2 = [r[name][0] for r in rows]
        rmse = [r[name][1] for r in rows]
        secs = [r[name][2] for r in rows]
        print(f"| {name} | {np.mean(r2):.3f} | {', '.join(f'{v:.3f}' for v in r2)} | {np.mean(rmse):.1f} "
              f"| {np.mean(secs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
