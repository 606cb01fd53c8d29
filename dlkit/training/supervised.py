"""The default supervised trainer (registered as ``supervised`` by the core plugin), on the shared epoch loop."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlkit.data.streaming import is_streaming
from dlkit.errors import InputError
from dlkit.plugins import get_registry
from dlkit.training.callbacks import Callback, CurvePlot, MetricsLog, ProgressBar
from dlkit.training.distributed import all_reduce_sum, rank_and_world
from dlkit.training.heap import TRIM_EVERY, trim_heap
from dlkit.training.loop import EpochLoop
from dlkit.training.memory_format import choose_channels_last
from dlkit.training.supervised_options import DEFAULTS, validate

__all__ = ["DEFAULTS", "SupervisedTrainer", "evaluate_arrays", "fit", "model_outputs", "validate"]

TARGET_DTYPES = {"int64": torch.long, "float32": torch.float32}


def make_optimizer(params, config: dict):

    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"], nesterov=config["momentum"] > 0)
    cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=config["lr"], weight_decay=config["weight_decay"])


def make_scheduler(optimizer, config: dict):

    if config["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["epochs"])
    if config["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config["step_size"], gamma=config["gamma"])
    return None


def random_shift(x, max_shift: int, generator):
    """Shift each image by up to ``max_shift`` pixels in each direction, filling with zeros."""
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    oy = torch.randint(0, 2 * s + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * s + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (b, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (b, 1, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


EVAL_BATCH_BYTES = 4 * 2 ** 20  # float32 input bytes per evaluation batch: 85 64x64 RGB images, 1024 digits


def eval_batch_size(x, limit: int = 1024) -> int:
    """Rows per evaluation batch over ``x``: at most ``limit``, and at most :data:`EVAL_BATCH_BYTES`
    of float32 input, so that evaluating large images holds about a training batch's activations
    (the whole split is never converted at once)."""
    row = 4 * int(np.prod(x.shape[1:], dtype=np.int64)) if len(x.shape) > 1 else 4
    return max(1, min(int(limit), EVAL_BATCH_BYTES // max(row, 1)))


def model_outputs(model, x, device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
    """A model's outputs on an array of inputs, in batches (of at most ``batch_size`` rows, see
    :func:`eval_batch_size`), as float32 numpy."""
    model.eval()
    step = eval_batch_size(x, batch_size)
    parts = []
    with torch.inference_mode():  # sliced before conversion: a streamed split reads only each batch
        for n, i in enumerate(range(0, len(x), step), 1):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + step], dtype=np.float32)).to(device)
            parts.append(model(xb).float().cpu().numpy())
            if n % TRIM_EVERY == 0:  # memory independent of the split's size (see dlkit.training.heap)
                trim_heap()
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def evaluate_arrays(model, x, y, device: str = "cpu", batch_size: int = 1024, task: str = "classification") -> dict:
    """The task's metrics of a model on arrays (a classifier's ``accuracy`` and ``loss``), in
    batches of at most ``batch_size`` rows."""
    return get_registry().task(task).metrics(model_outputs(model, x, device, batch_size), np.asarray(y))


class _Rows(torch.utils.data.Dataset):
    """Item ``i`` is step ``i``'s whole batch, read from a streamed split (in a DataLoader worker)."""

    def __init__(self, x, y, steps: list[np.ndarray]):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> tuple:
        idx = self.steps[i]
        return torch.from_numpy(self.x[idx]), self.y[torch.from_numpy(idx)]


def _workers(setting: int) -> int:
    """DataLoader worker processes for streamed data: ``train.workers``, -1 for the CPUs available, up to 4."""
    if setting >= 0:
        return setting
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def batch_starts(n: int, batch_size: int, world: int = 1) -> list[int]:
    """The first row of each batch of an epoch over ``n`` rows: what the loop runs and what the
    progress bar counts."""
    # Batch norm cannot train on a batch of one sample: skip such a trailing batch.
    starts = [i for i in range(0, n, batch_size) if n - i > 1 or i == 0]
    # Under torchrun every rank takes a share of each batch: one with fewer rows than ranks is
    # skipped by all alike (a rank with no rows would hang DDP).
    return [i for i in starts if min(batch_size, n - i) >= world]


class SupervisedTrainer(EpochLoop):
    """Minibatch training with validation, early stopping, checkpoints and callbacks, on the
    shared :class:`~dlkit.training.loop.EpochLoop`. Subclasses replace :meth:`loss`."""

    def __init__(self, run):
        config = run.config
        self.task_name = getattr(run, "task_name", run.spec.task)
        self.task = get_registry().task(self.task_name)
        if self.task.loss is None:
            raise InputError(f"task {self.task_name!r} has no training loss: the supervised trainer cannot fit it")
        score = self.task.score
        steps = len(batch_starts(len(run.data.y_train), config["batch_size"], rank_and_world()[1]))
        callbacks: list[Callback] = [
            MetricsLog(Path(run.workdir) / "metrics.jsonl"),
            CurvePlot(Path(run.workdir) / "curves.png",
                      [("loss", ["train_loss", "val_loss"]), (score, [f"train_{score}", f"val_{score}"])]),
        ]
        if not run.quiet:
            callbacks.insert(0, ProgressBar(config["epochs"], steps, ["train_loss", "val_loss", f"val_{score}", "lr",
                                                                      "seconds"]))
        super().__init__(run, callbacks)
        # Under torchrun each rank trains on its share of every batch; DDP averages gradients so
        # the step equals single-process training on the whole batch.
        self.forward = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.optimizers = {"optim": self.optimizer}
        self.schedulers = {"lr": self.scheduler}
        self.best = {"val_loss": float("inf"), "epoch": 0, "bad_epochs": 0}
        self.best_state: dict | None = None
        amp = config["amp"]
        self.autocast_dtype = (torch.float16 if self.device.startswith("cuda") else torch.bfloat16) if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp and self.device.startswith("cuda") else None
        self._data: tuple | None = None
        self.workers = _workers(config["workers"])
        self.channels_last = choose_channels_last(self.model, run, self.device, config["channels_last"])
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    # -- state beyond the loop's -------------------------------------------------------------------
    def extra_state(self) -> tuple[dict, dict]:
        tensors = {f"best.{k}": v for k, v in (self.best_state or {}).items()}
        return tensors, {"best": self.best}

    def load_extra_state(self, tensors: dict, state: dict) -> None:
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        self.best = state["best"]

    # -- one epoch ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.config
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        try:
            return super().fit()
        finally:
            if cfg["deterministic"]:
                torch.use_deterministic_algorithms(False)

    def _tensors(self) -> tuple:
        """The training split on the device (in-memory data), or as it is (streamed data)."""
        if self._data is None:
            data = self.run.data
            y = torch.as_tensor(np.asarray(data.y_train), dtype=TARGET_DTYPES[self.task.target_dtype])
            if is_streaming(data.x_train):
                self._data = (data.x_train, y)
            else:
                # Contiguous (NCHW): a strided array would run other, not bit-equal, conv kernels.
                x = np.ascontiguousarray(data.x_train, dtype=np.float32)
                self._data = (torch.from_numpy(x).to(self.device), y.to(self.device))
        return self._data

    def batches(self, perm, stops: list[int]) -> Iterator[tuple]:
        """``(idx, xb, yb)`` per step of an epoch, ``idx`` the rows of this rank's share. In-memory
        data is sliced on the device; streamed data is read by a DataLoader's worker processes
        (pinned memory on CUDA), a bounded number of batches ahead, in the same order."""
        x, y = self._tensors()
        bs = self.config["batch_size"]
        steps = []
        for i in stops:
            idx = perm[i:i + bs]
            if self.world > 1:
                idx = idx[self.rank::self.world]
            steps.append(idx)
        if not is_streaming(x):
            for idx in steps:
                yield idx, x[idx], y[idx]
            return
        loader = torch.utils.data.DataLoader(
            _Rows(x, y, [idx.cpu().numpy() for idx in steps]), batch_size=None, shuffle=False,
            num_workers=self.workers, pin_memory=self.device.startswith("cuda"),
            prefetch_factor=2 if self.workers else None,
            generator=torch.Generator())  # its own: seeding workers must not draw from the run's random stream
        for idx, (xb, yb) in zip(steps, loader):
            yield idx, xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int) -> dict:
        cfg, model = self.config, self.model
        x, _ = self._tensors()
        n, bs = len(x), cfg["batch_size"]
        augment = cfg["augment"] if self.run.data.kind == "image" else 0
        stops = batch_starts(n, bs, self.world)
        if self.autocast_dtype is None:
            autocast = contextlib.nullcontext
        else:
            autocast = functools.partial(torch.autocast, self.device.split(":")[0], dtype=self.autocast_dtype)
        # Shuffling and augmentation draw from a generator keyed by (seed, epoch), so a resumed
        # run sees exactly the batches an uninterrupted one would.
        gen = torch.Generator().manual_seed(self.run.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).to(self.device)
        model.train()
        total_loss = torch.zeros((), device=self.device)
        total_score = torch.zeros((), device=self.device)
        for step, (idx, xb, yb) in enumerate(self.batches(perm, stops)):
            if augment:
                xb = random_shift(xb, augment, gen)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = self.forward(xb)
                loss = self.loss(out.float(), xb, yb, idx)
            self._step(loss)
            total_loss.add_(loss.detach(), alpha=len(idx))
            if self.task.batch_score is not None:
                total_score.add_(self.task.batch_score(out.detach(), yb))
            self.step_end(step)
        all_reduce_sum(total_loss, total_score)
        train_loss = total_loss.item() / n
        self.check_finite("loss", train_loss, "lower --lr or set train.clip_grad"
                          if epoch > 1 else "lower --lr, set train.clip_grad or check the data's scale")
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler:
            self.scheduler.step()
        val = evaluate_arrays(model, self.run.data.x_val, self.run.data.y_val, self.device, task=self.task_name)
        logs = {"train_loss": train_loss}
        if self.task.batch_score is not None:
            logs[f"train_{self.task.score}"] = total_score.item() / n
        return {**logs, **{f"val_{k}": v for k, v in val.items()}, "lr": lr}

    def _step(self, loss) -> None:
        """Backward and one optimizer step (gradient scaling under float16 AMP, clipping)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config["clip_grad"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["clip_grad"])
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def after_epoch(self, epoch: int, logs: dict) -> None:
        self._early_stopping(logs["val_loss"])

    def finish(self, logs: dict) -> dict:
        if self.config["restore_best"] and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.channels_last:  # stored weights are contiguous tensors either way
            self.model.to(memory_format=torch.contiguous_format)
        return {"epochs": self.epoch, "best_epoch": self.best["epoch"], "train_seconds": round(self.seconds, 3),
                "stopped_early": self.epoch < self.config["epochs"], "channels_last": self.channels_last}

    def loss(self, out, xb, yb, idx):
        """One batch's training loss: ``out`` the logits for inputs ``xb`` (augmented, if on),
        ``yb`` the targets, ``idx`` the batch's row numbers in the training set: the task's loss.
        Subclasses replace it (the distillation trainer adds the teacher's soft targets)."""
        return self.task.loss(out, yb, self.config, self.run.data)

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
