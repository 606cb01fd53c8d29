"""Trainer callbacks (Lightning-style): no-op hooks a trainer dispatches, and the built-in ones.

The epoch loop (:class:`dlkit.training.loop.EpochLoop`) calls ``on_train_start``,
``on_epoch_start``, ``on_step_end``, ``on_epoch_end``, ``on_train_end`` and ``teardown`` on
every callback in order. A callback keeps its own state, and takes part in checkpoints through
:meth:`Callback.state_dict` / :meth:`Callback.load_state_dict`, so a resumed run continues it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


class Callback:
    """Base class: override the events you need."""

    def on_train_start(self, trainer: Any) -> None: ...

    def on_epoch_start(self, trainer: Any, epoch: int) -> None: ...

    def on_step_end(self, trainer: Any, step: int, logs: dict) -> None: ...

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, trainer: Any, logs: dict) -> None: ...

    def teardown(self, trainer: Any) -> None:
        """Always called last, also when training failed: release what the callback holds."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint (one per callback class)."""
        return type(self).__qualname__

    def state_dict(self) -> dict:
        """JSON-serialisable state saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state when a run resumes."""


class MetricsLog(Callback):
    """Append each epoch's metrics as one JSON line to ``metrics.jsonl``.

    Lines are flushed each epoch (``tail -f`` follows them) and fsync'd once, at the end: a
    resumed run rewrites the log from its checkpoint anyway, so a per-epoch fsync would only
    slow small models down.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.epoch = 0

    def on_epoch_end(self, trainer, epoch, logs):
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **logs}) + "\n")
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        # Lines for epochs after the checkpoint will be written again.
        self.epoch = int(state.get("epoch", 0))
        truncate_metrics_log(self.path, self.epoch)

    def on_train_end(self, trainer, logs):
        if self.path.is_file():
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())


def truncate_metrics_log(path: Path, epochs_done: int) -> None:
    """On resume, drop lines for epochs after the last checkpoint (they will be redone).

    Rewritten atomically: a kill mid-rewrite leaves the old log, never a torn one."""
    from dlkit.store.atomic import write_bytes

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= epochs_done:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write
    write_bytes(path, "".join(line + "\n" for line in keep).encode())


class CurvePlot(Callback):
    """Plot the per-epoch metrics to a PNG at the end of training (matplotlib, Agg)."""

    def __init__(self, path: Path, panels: list[tuple[str, list[str]]]):
        self.path = Path(path)
        self.panels = panels  # (title, [metric keys]) per subplot
        self.history: list[dict] = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.history.append({"epoch": epoch, **logs})

    def state_dict(self) -> dict:
        return {"history": self.history}  # the curves cover the whole run, not only a resumed part

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def on_train_end(self, trainer, logs):
        if self.history:
            plot_curves(self.history, self.panels, self.path)


def plot_curves(history: list[dict], panels: list[tuple[str, list[str]]], path: Path) -> None:
    """Write one PNG with a subplot per panel."""
    # The object API with the Agg canvas, not pyplot: no global figure registry (safe in threads,
    # nothing to close) and no backend switch for a user who imported pyplot themselves. Fixed
    # margins instead of tight_layout, which costs about a third of the drawing time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from dlkit.store.atomic import atomic_path

    fig = Figure(figsize=(5 * len(panels), 3.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.22)
    epochs = [h["epoch"] for h in history]
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


class ProgressBar(Callback):
    """A rich progress bar per epoch on stderr, and one summary line when each epoch ends.

    The line fits 80 columns for a classifier (short labels, 3 decimals): ``epoch   3/40  loss
    0.123  val_loss 0.145  val_acc 0.961  lr 0.0029  1.52s/epoch``. ``seconds`` in the logs (and
    metrics.jsonl) is the run's cumulative training time; the line shows this epoch's.
    ``steps_per_epoch`` must be the number of ``step_end`` calls an epoch makes.
    """

    def __init__(self, total_epochs: int, steps_per_epoch: int, fields: list[str]):
        self.total_epochs = total_epochs
        self.steps = steps_per_epoch
        self.fields = fields
        self.progress = None
        self.task = None
        self.epoch_started = 0.0  # the cumulative seconds when this epoch started

    def on_train_start(self, trainer):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True, file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.progress.start()

    def on_epoch_start(self, trainer, epoch):
        self.epoch_started = getattr(trainer, "seconds", 0.0)
        desc = f"epoch {epoch}/{self.total_epochs}"
        if self.task is None:
            self.task = self.progress.add_task(desc, total=self.steps, status="")
        else:
            self.progress.reset(self.task, total=self.steps, description=desc, status="")

    def on_step_end(self, trainer, step, logs):
        self.progress.advance(self.task)

    def on_epoch_end(self, trainer, epoch, logs):
        self.progress.console.print(self.line(epoch, logs), highlight=False)

    def line(self, epoch: int, logs: dict) -> str:
        """The summary line of one epoch."""
        parts = [f"epoch {epoch:>3}/{self.total_epochs}"]
        for key in self.fields:
            if logs.get(key) is None:
                continue
            if key == "seconds":
                parts.append(f"{logs[key] - self.epoch_started:.2f}s/epoch")  # fixed width: lines stay in 80 columns
            else:
                parts.append(_fmt(key, logs[key]))
        return "  ".join(parts)

    def teardown(self, trainer):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


LABELS = {"train_loss": "loss", "val_accuracy": "val_acc", "train_accuracy": "acc"}


def _fmt(key: str, value: Any) -> str:
    label = LABELS.get(key, key)
    if not isinstance(value, float):
        return f"{label} {value}"
    if key == "lr":  # a decaying rate needs its significant digits, not its leading zeros
        return f"lr {value:.2g}"
    return f"{label} {value:.3f}" if abs(value) < 100 else f"{label} {value:.4g}"
