"""The default supervised trainer (registered as ``supervised`` by the core plugin)."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Any

from dlkit.training.callbacks import Callback, CurvePlot, MetricsLog, ProgressBar, truncate_metrics_log
from dlkit.training.state import BackgroundWriter, load_train_state, optimizer_from_flat, optimizer_to_flat, pack_train_state, write_train_state
from dlkit.training.distributed import all_reduce_sum
from dlkit.errors import DlkitError, InputError

CHECKPOINT = "checkpoint.safetensors"

DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adamw",  # adam | adamw | sgd
    "weight_decay": 1e-4,
    "momentum": 0.9,  # sgd only
    "schedule": "cosine",  # cosine | step | none
    "step_size": 10,  # step schedule: epochs between decays
    "gamma": 0.1,  # step schedule: decay factor
    "patience": 10,  # early stopping on val_loss; 0 disables
    "min_delta": 0.0,
    "restore_best": True,  # keep the weights of the best validation epoch
    "clip_grad": 0.0,  # max gradient norm; 0 disables
    "augment": 0,  # images: random shifts of up to N pixels, zero padded
    "label_smoothing": 0.0,
    "amp": False,  # mixed precision (float16 on CUDA, bfloat16 on CPU)
    "deterministic": False,
    "device": "auto",  # auto | cpu | cuda | cuda:N
}


class TrainingDiverged(DlkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept for --resume."""


def validate(config: dict) -> None:
    """Refuse option values no run could use, naming the option."""
    checks = [
        ("epochs", config["epochs"] >= 1, "must be >= 1"),
        ("batch_size", config["batch_size"] >= 1, "must be >= 1"),
        ("lr", config["lr"] > 0, "must be > 0"),
        ("optimizer", config["optimizer"] in ("adam", "adamw", "sgd"), "must be adam, adamw or sgd"),
        ("schedule", config["schedule"] in ("cosine", "step", "none"), "must be cosine, step or none"),
        ("patience", config["patience"] >= 0, "must be >= 0"),
        ("augment", config["augment"] >= 0, "must be >= 0"),
        ("weight_decay", config["weight_decay"] >= 0, "must be >= 0"),
        ("clip_grad", config["clip_grad"] >= 0, "must be >= 0"),
        ("label_smoothing", 0 <= config["label_smoothing"] < 1, "must be in [0, 1)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise InputError(f"train.{key} {why}, got {config[key]!r}")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unavailable CUDA is an InputError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return name


def make_optimizer(params, config: dict):
    import torch

    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"], nesterov=config["momentum"] > 0)
    cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=config["lr"], weight_decay=config["weight_decay"])


def make_scheduler(optimizer, config: dict):
    import torch

    if config["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["epochs"])
    if config["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config["step_size"], gamma=config["gamma"])
    return None


def random_shift(x, max_shift: int, generator):
    """Shift each image by up to ``max_shift`` pixels in each direction, filling with zeros."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    oy = torch.randint(0, 2 * s + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * s + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (b, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (b, 1, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def evaluate_arrays(model, x, y, device: str = "cpu", batch_size: int = 1024) -> dict:
    """Accuracy and mean cross-entropy of a classifier on arrays (numpy or tensors)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            out = model(xb).float()
            loss += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    n = max(len(x), 1)
    return {"accuracy": correct / n, "loss": loss / n}


class SupervisedTrainer:
    """Minibatch training with validation, early stopping, checkpoints and callbacks."""

    def __init__(self, run):
        import torch

        from dlkit.training.distributed import local_device, rank_and_world

        self.run = run
        self.config = config = run.config
        self.device = local_device(resolve_device(config["device"]))
        self.model = run.model.to(self.device)
        # Under torchrun each rank trains on its share of every batch; DDP averages gradients so
        # the step equals single-process training on the whole batch. Only rank 0 writes.
        self.rank, self.world = rank_and_world()
        self.forward = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        self.workdir = Path(run.workdir)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.epoch = 0
        self.best = {"val_loss": float("inf"), "epoch": 0, "bad_epochs": 0}
        self.best_state: dict | None = None
        self.checkpoints = BackgroundWriter()
        self.seconds = 0.0
        self.stop = False
        amp = config["amp"]
        self.autocast_dtype = (torch.float16 if self.device.startswith("cuda") else torch.bfloat16) if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp and self.device.startswith("cuda") else None
        steps = max(1, len(run.data.y_train) // config["batch_size"])
        self.callbacks: list[Callback] = [
            MetricsLog(self.workdir / "metrics.jsonl"),
            CurvePlot(self.workdir / "curves.png",
                      [("loss", ["train_loss", "val_loss"]), ("accuracy", ["train_accuracy", "val_accuracy"])]),
        ]
        if self.rank > 0:
            self.callbacks = []
        elif not run.quiet:
            self.callbacks.insert(0, ProgressBar(config["epochs"], steps, ["train_loss", "val_loss", "val_accuracy", "lr", "seconds"]))
        self.callbacks += list(run.callbacks)

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Snapshot the training state now; a thread writes it (atomically, fsync'd) while the
        next epoch trains. ``self.checkpoints.wait()`` returns once it is on disk."""
        import torch

        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        opt_tensors, opt_state = optimizer_to_flat(self.optimizer, "optim")
        tensors.update(opt_tensors)
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.startswith("cuda"):
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        state = {
            "epoch": self.epoch, "best": self.best, "seconds": self.seconds, "optimizer": opt_state,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
        }
        # Copied here, in the training thread: the writer thread then makes no torch call (one
        # from a second thread would start a second pool of compute threads).
        self.checkpoints.submit(write_train_state, self.workdir / CHECKPOINT, *pack_train_state(tensors, state))

    def load_checkpoint(self) -> None:
        import torch

        tensors, state = load_train_state(self.workdir / CHECKPOINT)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        optimizer_from_flat(self.optimizer, "optim", tensors, state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and self.device.startswith("cuda"):
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        self.epoch, self.best, self.seconds = state["epoch"], state["best"], state["seconds"]
        truncate_metrics_log(self.workdir / "metrics.jsonl", self.epoch)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        import torch

        cfg, data, model = self.config, self.run.data, self.model
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if self.run.resume and (self.workdir / CHECKPOINT).is_file():
            self.load_checkpoint()
        x = torch.as_tensor(data.x_train, dtype=torch.float32).to(self.device)
        y = torch.as_tensor(data.y_train, dtype=torch.long).to(self.device)
        n, bs = len(x), cfg["batch_size"]
        augment = cfg["augment"] if data.kind == "image" else 0
        # Batch norm cannot train on a batch of one sample: skip such a trailing batch.
        stops = [i for i in range(0, n, bs) if n - i > 1 or i == 0]
        logs: dict = {}
        if self.autocast_dtype is None:
            autocast = contextlib.nullcontext
        else:
            autocast = functools.partial(torch.autocast, self.device.split(":")[0], dtype=self.autocast_dtype)
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.epoch < cfg["epochs"] and not self.stop:
                self.epoch += 1
                epoch = self.epoch
                started = time.perf_counter()
                for cb in self.callbacks:
                    cb.on_epoch_start(self, epoch)
                # Shuffling and augmentation draw from a generator keyed by (seed, epoch), so a
                # resumed run sees exactly the batches an uninterrupted one would.
                gen = torch.Generator().manual_seed(self.run.seed * 1_000_003 + epoch)
                perm = torch.randperm(n, generator=gen).to(self.device)
                model.train()
                total_loss = torch.zeros((), device=self.device)
                total_correct = torch.zeros((), device=self.device, dtype=torch.long)
                for step, i in enumerate(stops):
                    idx = perm[i:i + bs]
                    if self.world > 1:
                        if len(idx) < self.world:
                            continue  # every rank skips it alike: a rank with no rows would hang DDP
                        idx = idx[self.rank::self.world]
                    xb, yb = x[idx], y[idx]
                    if augment:
                        xb = random_shift(xb, augment, gen)
                    with autocast():
                        out = self.forward(xb)
                        loss = self.loss(out.float(), xb, yb, idx)
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.scaler:
                        self.scaler.scale(loss).backward()
                        self.scaler.unscale_(self.optimizer)
                    else:
                        loss.backward()
                    if cfg["clip_grad"]:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
                    if self.scaler:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    total_loss.add_(loss.detach(), alpha=len(idx))
                    total_correct.add_(out.detach().argmax(1).eq(yb).sum())
                    for cb in self.callbacks:
                        cb.on_step_end(self, step, {})
                all_reduce_sum(total_loss, total_correct)
                train_loss = total_loss.item() / n
                if not math.isfinite(train_loss):
                    kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept: lower --lr or set "
                            f"train.clip_grad, then --resume" if epoch > 1 else
                            "no epoch finished, so nothing is kept: lower --lr, set train.clip_grad or "
                            "check the data's scale")
                    raise TrainingDiverged(f"loss became {train_loss} in epoch {epoch}; stopped. {kept}")
                lr = self.optimizer.param_groups[0]["lr"]
                if self.scheduler:
                    self.scheduler.step()
                val = evaluate_arrays(model, data.x_val, data.y_val, self.device)
                self.seconds += time.perf_counter() - started
                logs = {"train_loss": train_loss, "train_accuracy": total_correct.item() / n,
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr,
                        "seconds": round(self.seconds, 3)}
                self._early_stopping(val["loss"])
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, logs)
                if self.rank == 0:
                    self.save_checkpoint()
            self.checkpoints.wait()
            if cfg["restore_best"] and self.best_state is not None:
                model.load_state_dict(self.best_state)
            for cb in self.callbacks:
                cb.on_train_end(self, logs)
        finally:
            # A failed run keeps its last good checkpoint: let the write in flight finish (an
            # error of its own must not hide the one that stopped the run).
            self.checkpoints.wait(raise_errors=False)
            for cb in self.callbacks:
                cb.teardown(self)
            if cfg["deterministic"]:
                torch.use_deterministic_algorithms(False)
        return {"epochs": self.epoch, "best_epoch": self.best["epoch"], "train_seconds": round(self.seconds, 3),
                "stopped_early": self.epoch < cfg["epochs"]}

    def loss(self, out, xb, yb, idx):
        """One batch's training loss: ``out`` the logits for inputs ``xb`` (augmented, if on),
        ``yb`` the labels, ``idx`` the batch's row numbers in the training set. Subclasses
        replace it (the distillation trainer adds the teacher's soft targets)."""
        import torch.nn.functional as F

        return F.cross_entropy(out, yb, label_smoothing=self.config["label_smoothing"])

    def _early_stopping(self, val_loss: float) -> None:
        if val_loss < self.best["val_loss"] - self.config["min_delta"]:
            self.best.update(val_loss=val_loss, epoch=self.epoch, bad_epochs=0)
            if self.config["restore_best"]:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.best["bad_epochs"] += 1
            patience = self.config["patience"]
            if patience and self.best["bad_epochs"] >= patience:
                self.stop = True


def fit(run) -> dict:
    """Train ``run.model`` on ``run.data`` (the ``supervised`` trainer's entry point)."""
    validate(run.config)
    return SupervisedTrainer(run).fit()
