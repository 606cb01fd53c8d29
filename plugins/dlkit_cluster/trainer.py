"""The ``autoencoder`` trainer: reconstruction loss on dlkit's epoch loop, then k-means on the
embeddings of the training split, whose centroids become part of the model.

Labels, when the data has them, are never trained on: they are only scored against (ARI, NMI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlkit import Callback, CurvePlot, EpochLoop, InputError, MetricsLog, ProgressBar, get_registry, random_shift

from . import kmeans
from .model import ClusterAutoencoder


def validate(config: dict) -> None:
    """Refuse option values no run could use, naming the option."""
    checks = [
        ("epochs", config["epochs"] >= 1, "must be >= 1"),
        ("batch_size", config["batch_size"] >= 2, "must be >= 2"),
        ("lr", config["lr"] > 0, "must be > 0"),
        ("weight_decay", config["weight_decay"] >= 0, "must be >= 0"),
        ("patience", config["patience"] >= 0, "must be >= 0 (0: no early stopping)"),
        ("augment", config["augment"] >= 0, "must be >= 0"),
        ("noise", config["noise"] >= 0, "must be >= 0"),
        ("n_init", config["n_init"] >= 1, "must be >= 1"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise InputError(f"train.{key} {why}, got {config[key]!r}")


def standardize(x: np.ndarray, input_spec: dict) -> np.ndarray:
    """What the model's own input standardisation does (tabular data), in numpy."""
    prep = input_spec.get("preprocessing")
    if isinstance(prep, dict) and "standardize" in prep:
        s = prep["standardize"]
        return ((x - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32)).astype(np.float32)
    return x.astype(np.float32)


class AutoencoderTrainer(EpochLoop):
    """Minibatch reconstruction (MSE) with AdamW, a cosine schedule, optional input noise and
    image shifts, early stopping on the validation reconstruction loss; resume and callbacks are
    the loop's."""

    def __init__(self, run):
        cfg = run.config
        self.ae = next(m for m in run.model.modules() if isinstance(m, ClusterAutoencoder))
        steps = max(1, len(run.data.x_train) // cfg["batch_size"])
        callbacks: list[Callback] = [
            MetricsLog(Path(run.workdir) / "metrics.jsonl"),
            CurvePlot(Path(run.workdir) / "curves.png", [("reconstruction loss", ["train_loss", "val_loss"])]),
        ]
        if not run.quiet:
            callbacks.insert(0, ProgressBar(cfg["epochs"], steps, ["train_loss", "val_loss", "lr", "seconds"]))
        super().__init__(run, callbacks)
        self.optimizer = torch.optim.AdamW(self.ae.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg["epochs"])
        self.optimizers, self.schedulers = {"optim": self.optimizer}, {"lr": self.scheduler}
        spec = run.data.input_spec
        self.x = {split: torch.from_numpy(standardize(run.data.split(split)[0], spec)).to(self.device)
                  for split in ("train", "val")}
        self.best = {"val_loss": float("inf"), "epoch": 0, "bad_epochs": 0}
        self.best_state: dict | None = None

    def extra_state(self) -> tuple[dict, dict]:
        return {f"best.{k}": v for k, v in (self.best_state or {}).items()}, {"best": self.best}

    def load_extra_state(self, tensors: dict, state: dict) -> None:
        self.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        self.best = state["best"]

    def train_epoch(self, epoch: int) -> dict:
        cfg, x = self.config, self.x["train"]
        # Batches and noise drawn from a generator keyed by (seed, epoch): a resumed run sees
        # exactly the batches an uninterrupted one would.
        gen = torch.Generator().manual_seed(self.run.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(x), generator=gen).to(self.device)
        bs = cfg["batch_size"]
        self.ae.train()
        total = 0.0
        for step, i in enumerate(range(0, len(x), bs)):
            target = x[perm[i:i + bs]]
            inputs = target
            if cfg["augment"] and self.ae.kind == "image":
                inputs = target = random_shift(target, cfg["augment"], gen)
            if cfg["noise"]:  # denoising: reconstruct the clean input from a noisy one
                inputs = inputs + cfg["noise"] * torch.randn(inputs.shape, generator=gen).to(self.device)
            loss = F.mse_loss(self.ae.reconstruct(inputs), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(target)
            self.step_end(step)
        train_loss = total / len(x)
        self.check_finite("reconstruction loss", train_loss, "lower --lr")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return {"train_loss": train_loss, "val_loss": self.reconstruction_loss(self.x["val"]), "lr": lr}

    def reconstruction_loss(self, x) -> float:
        self.ae.eval()
        with torch.inference_mode():
            return float(F.mse_loss(self.ae.reconstruct(x), x).item()) if len(x) else 0.0

    def after_epoch(self, epoch: int, logs: dict) -> None:
        if logs["val_loss"] < self.best["val_loss"]:
            self.best.update(val_loss=logs["val_loss"], epoch=epoch, bad_epochs=0)
            self.best_state = {k: v.detach().clone() for k, v in self.ae.state_dict().items()}
            return
        self.best["bad_epochs"] += 1
        if self.config["patience"] and self.best["bad_epochs"] >= self.config["patience"]:
            self.stop = True

    def finish(self, logs: dict) -> dict:
        if self.best_state is not None:
            self.ae.load_state_dict(self.best_state)
        return {"epochs": self.epoch, "best_epoch": self.best["epoch"], "train_seconds": round(self.seconds, 3),
                "val_reconstruction_loss": self.best["val_loss"]}


def embeddings(ae: ClusterAutoencoder, x: np.ndarray, spec: dict, batch: int = 1024) -> np.ndarray:
    """The encoder's embeddings of raw inputs ``x`` (standardised as the model does), on CPU."""
    ae = ae.cpu().eval()
    xs = torch.from_numpy(standardize(x, spec))
    with torch.inference_mode():
        parts = [ae.encode(xs[i:i + batch]).numpy() for i in range(0, len(xs), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, ae.centroids.shape[1]), np.float32)


def fit(run) -> dict:
    """Train the autoencoder, cluster its training embeddings, store the centroids in the model
    and return the metrics (the task's, on the validation and test splits)."""
    validate(run.config)
    data = run.data
    ae = next(m for m in run.model.modules() if isinstance(m, ClusterAutoencoder))
    source = data.source.get("source", data.name) if data.source else data.name
    rows = len(data.x_train) + len(data.x_val) + len(data.x_test)
    kmeans.check_clusters(ae.requested, rows, len(data.x_train), source)
    if data.targets == "labels" and not run.quiet:
        print(f"dlkit: {data.name} has labels: they are not trained on; ARI and NMI against them are reported "
              f"(data.targets=none reads no labels)", file=sys.stderr)
    metrics = AutoencoderTrainer(run).fit()
    spec, cfg = data.input_spec, run.config
    z_train, z_val = embeddings(ae, data.x_train, spec), embeddings(ae, data.x_val, spec)
    k = ae.requested if isinstance(ae.requested, int) else kmeans.choose_k(z_train, z_val, run.seed, cfg["n_init"],
                                                                             run.quiet)
    ae.set_centroids(kmeans.fit_kmeans(z_train, k, run.seed, cfg["n_init"]).cluster_centers_)
    task = get_registry().task(run.task_name)
    model = run.model.cpu().eval()
    with torch.inference_mode():
        for split in ("val", "test"):
            x, y = data.split(split)
            scores = task.metrics(model(torch.from_numpy(x.astype(np.float32))).numpy(), y)
            metrics.update({f"{split}_{key}": value for key, value in scores.items()})
    return {**metrics, "clusters": k}
