"""What `dlkit train` prints while it trains: epoch lines that fit 80 columns, time labelled,
and a progress bar whose total is the number of steps the epoch really runs."""

from __future__ import annotations

import re

from dlkit.testing import run_cli
from dlkit.training.callbacks import Callback, ProgressBar


def test_epoch_lines_fit_80_columns_and_say_what_the_seconds_are(repo, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich must not wrap: the line itself has to be short
    err = run_cli("train", "mlp", "--epochs", "2", "--set", "hidden=[16]", "--threads", "1").stderr
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, err
    for line in lines:
        assert len(line) <= 80, f"{len(line)} columns: {line}"
        # short labels, 3 decimals, and this epoch's seconds said as such (metrics.jsonl's are cumulative)
        assert re.fullmatch(r"epoch   [12]/2  loss \d\.\d{3}  val_loss \d\.\d{3}  val_acc \d\.\d{3}  lr \S+  "
                            r"[\d.]+s/epoch", line), line


class CountSteps(Callback):
    def __init__(self):
        self.steps: dict[int, int] = {}
        self.bar_total = None

    def on_train_start(self, trainer):
        self.bar_total = next(cb.steps for cb in trainer.callbacks if isinstance(cb, ProgressBar))

    def on_step_end(self, trainer, step, logs):
        self.steps[trainer.epoch] = self.steps.get(trainer.epoch, 0) + 1


def test_progress_bar_total_is_the_steps_an_epoch_runs(repo):
    from dlkit.training.run import train

    # digits: 1259 training rows in batches of 64 = 19 full batches and one of 43; the bar said 19.
    # A trailing batch of one row is skipped (batch norm cannot train on it).
    for batch_size, want in ((64, 20), (1258, 1), (1259, 1), (1000, 2)):
        counter = CountSteps()
        train("mlp", repo, sets=["hidden=[8]"], epochs=1, batch_size=batch_size, name=f"bs{batch_size}",
              callbacks=[counter])
        assert counter.steps == {1: want} and counter.bar_total == want, batch_size
