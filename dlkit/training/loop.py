"""One epoch loop for every trainer: resume, checkpoints, callback dispatch, device and divergence.

A trainer subclasses :class:`EpochLoop` and supplies one epoch of work (:meth:`train_epoch`)
and, where it has any, its own state beyond the model, optimizers and schedulers
(:meth:`extra_state` / :meth:`load_extra_state`). The loop owns everything else, written once:
the checkpoint file and its background writer, bit-exact ``--resume`` (RNG state included),
the callbacks (one dispatch point, :meth:`call`, and each callback's own state in the
checkpoint, as Lightning's do), the device, and the stop on a NaN or infinite loss.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from dlkit.errors import DlkitError, InputError
from dlkit.training.callbacks import Callback
from dlkit.training.state import (
    CHECKPOINT,
    BackgroundWriter,
    load_train_state,
    optimizer_from_flat,
    optimizer_to_flat,
    pack_train_state,
    write_train_state,
)

EVENTS = ("on_train_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_train_end", "teardown")


class TrainingDiverged(DlkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept for --resume."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unavailable CUDA is an InputError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    return name


class EpochLoop:
    """The loop a trainer builds on. Subclasses set ``self.optimizers`` (and ``self.schedulers``)
    as ``{name: object}`` in ``__init__`` and implement :meth:`train_epoch`.

    :param run: the :class:`dlkit.TrainRun` (model, data, config with ``epochs`` and ``device``,
        seed, workdir, resume, callbacks).
    :param callbacks: the trainer's own callbacks (progress bar, logs), before ``run.callbacks``.
    """

    def __init__(self, run: Any, callbacks: list[Callback] | None = None):
        from dlkit.training.distributed import local_device, rank_and_world

        self.run = run
        self.config = run.config
        self.device = local_device(resolve_device(str(run.config.get("device", "auto"))))
        self.model = run.model.to(self.device)
        self.workdir = Path(run.workdir)
        self.rank, self.world = rank_and_world()
        self.epoch = 0
        self.seconds = 0.0
        self.stop = False
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        # Only rank 0 writes (logs, plots, checkpoints): under torchrun the others train silently.
        self.callbacks: list[Callback] = (list(callbacks or []) if self.rank == 0 else []) + list(run.callbacks)
        for callback in self.callbacks:  # the loop calls every event and checkpoints each one's state
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must subclass dlkit.Callback, got {type(callback).__name__}")
        self.checkpoints = BackgroundWriter()

    # -- what a trainer supplies -------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch and return its logs (``seconds`` is added by the loop)."""
        raise NotImplementedError

    def after_epoch(self, epoch: int, logs: dict) -> None:
        """After the logs are complete, before callbacks see them: set ``self.stop`` to end early."""

    def finish(self, logs: dict) -> dict:
        """After the last epoch (and its checkpoint): the metrics :meth:`fit` returns."""
        return {"epochs": self.epoch, "train_seconds": round(self.seconds, 3)}

    def extra_state(self) -> tuple[dict, dict]:
        """The trainer's own ``(tensors, JSON state)`` to checkpoint beside the loop's."""
        return {}, {}

    def load_extra_state(self, tensors: dict, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""

    # -- the loop ------------------------------------------------------------------------------------
    def call(self, event: str, *args: Any) -> None:
        """Dispatch one event to every callback, in order: the single dispatch point."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def step_end(self, step: int, logs: dict | None = None) -> None:
        """Trainers call this after each optimisation step (progress bars advance on it)."""
        self.call("on_step_end", step, logs or {})

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / CHECKPOINT

    def fit(self) -> dict:
        """Resume if asked, run the remaining epochs, checkpoint after each, return the metrics."""
        if self.run.resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
        logs: dict = {}
        self.call("on_train_start")
        try:
            while self.epoch < self.config["epochs"] and not self.stop:
                self.epoch += 1
                started = time.perf_counter()
                self.call("on_epoch_start", self.epoch)
                logs = self.train_epoch(self.epoch)
                self.seconds += time.perf_counter() - started
                logs["seconds"] = round(self.seconds, 3)
                self.after_epoch(self.epoch, logs)
                self.call("on_epoch_end", self.epoch, logs)
                if self.rank == 0:
                    self.save_checkpoint()
            self.checkpoints.wait()
            metrics = self.finish(logs)
            self.call("on_train_end", logs)
        finally:
            # A failed run keeps its last good checkpoint: let the write in flight finish (an
            # error of its own must not hide the one that stopped the run).
            self.checkpoints.wait(raise_errors=False)
            self.call("teardown")
        return metrics

    def check_finite(self, what: str, value: float, hint: str) -> None:
        """Stop with :class:`TrainingDiverged` when ``value`` (a loss) is NaN or infinite."""
        if math.isfinite(value):
            return
        epoch = self.epoch
        kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept: {hint}, then --resume" if epoch > 1 else
                f"no epoch finished, so nothing is kept: {hint}")
        raise TrainingDiverged(f"{what} became {value} in epoch {epoch}; stopped. {kept}")

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Snapshot the whole training state now; a thread writes it (atomically, fsync'd) while
        the next epoch trains. ``self.checkpoints.wait()`` returns once it is on disk."""
        tensors, extra = self.extra_state()
        tensors = {**{f"model.{k}": v for k, v in self.model.state_dict().items()}, **tensors}
        optimizers = {}
        for name, optimizer in self.optimizers.items():
            flat, optimizers[name] = optimizer_to_flat(optimizer, name)
            tensors.update(flat)
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.startswith("cuda"):
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        state = {
            "epoch": self.epoch, "seconds": self.seconds, "optimizers": optimizers,
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items() if s is not None},
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "trainer": extra,
        }
        # Copied here, in the training thread: the writer thread then makes no torch call (one
        # from a second thread would start a second pool of compute threads).
        self.checkpoints.submit(write_train_state, self.checkpoint_path, *pack_train_state(tensors, state))

    def load_checkpoint(self) -> None:
        """Restore what :meth:`save_checkpoint` wrote, so training continues bit-exactly."""
        like = {f"model.{k}": v for k, v in self.model.state_dict().items()}  # shapes/dtypes checked first
        tensors, state = load_train_state(self.checkpoint_path, like=like)
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            for name, optimizer in self.optimizers.items():
                optimizer_from_flat(optimizer, name, tensors, state["optimizers"][name])
            for name, scheduler in self.schedulers.items():
                if scheduler is not None and name in state["schedulers"]:
                    scheduler.load_state_dict(state["schedulers"][name])
            torch.set_rng_state(tensors["rng.cpu"])
            if "rng.cuda" in tensors and self.device.startswith("cuda"):
                torch.cuda.set_rng_state(tensors["rng.cuda"])
            self.epoch, self.seconds = state["epoch"], state["seconds"]
            for callback in self.callbacks:
                callback.load_state_dict(state["callbacks"].get(callback.state_key, {}))
            self.load_extra_state(tensors, state["trainer"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # crafted or foreign state
            raise InputError(f"{self.checkpoint_path}: checkpoint does not fit this run "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
