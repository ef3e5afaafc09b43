"""Progress on the main process: a tqdm bar on a terminal; plain lines for log files.

On a terminal the bar redraws in place and shows the running loss and metrics every
`log_step_freq` batches. When stdout is not a terminal (SLURM, CI, `| tee`) carriage-return
redraws would bury a log file, so one plain line is written every `log_every_s` seconds instead:
epoch, batch/total, loss, samples/s and ETA. After a mid-epoch resume both start at the resumed
batch, and rates count only the batches trained since.
"""

from __future__ import annotations

import sys
import time

from train.engine.events import Callback


def _fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class _EpochProgress(Callback):
    """What both forms share: where the epoch started (batch, samples, time)."""

    def on_epoch_begin(self, epoch, run):
        self.run = run
        self.epoch, self.first_batch, self.first_samples = epoch, run.batch, run.samples_seen
        self.start = time.monotonic()

    def rate(self, now: float) -> float:
        elapsed = now - self.start
        return (self.run.samples_seen - self.first_samples) / elapsed if elapsed > 0 else 0.0


class ProgressBar(_EpochProgress):
    """A tqdm bar per epoch (main process only)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bar = None

    def on_epoch_begin(self, epoch, run):
        super().on_epoch_begin(epoch, run)
        if not run.is_main_process:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.batches_per_epoch, initial=run.batch, desc=f"epoch {epoch}/{run.epochs}",
                        unit="batch", leave=False, dynamic_ncols=True, file=self.stream)

    def on_train_batch_end(self):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, logs):
        if self.bar is not None:
            shown = {k: f"{v:.4f}" for k, v in logs.items()}
            shown["samples/s"] = f"{self.rate(time.monotonic()):.0f}"
            self.bar.set_postfix(shown, refresh=False)

    def on_epoch_end(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_interrupt(self):
        self.on_epoch_end()  # clear the bar before the stop's message


class ProgressLines(_EpochProgress):
    """One line every `every_s` seconds, without carriage returns (main process only)."""

    def __init__(self, every_s: float = 30.0, print_fn=print):
        self.every_s = every_s
        self.print = print_fn

    def on_epoch_begin(self, epoch, run):
        super().on_epoch_begin(epoch, run)
        self.last = self.start

    def on_train_batch_end(self, batch, run):
        now = time.monotonic()
        if now - self.last < self.every_s or not run.is_main_process:
            return  # the common case costs one clock read
        self.last = now
        total = run.batches_per_epoch  # None: a stream of unknown length
        values = " ".join(f"{k} {v:.4f}" for k, v in run.running_logs().items())
        if total is None:
            self.print(f"epoch {self.epoch}/{run.epochs} batch {batch} {values} {self.rate(now):.0f} samples/s",
                       flush=True)
            return
        eta = (now - self.start) / max(1, batch - self.first_batch) * (total - batch)
        self.print(f"epoch {self.epoch}/{run.epochs} batch {batch}/{total} {values} "
                   f"{self.rate(now):.0f} samples/s eta {_fmt_s(eta)}", flush=True)


def progress_for(enabled, every_s: float, stream=None) -> Callback:
    """A bar when `enabled` (None: when `stream` is a terminal), else plain lines."""
    stream = stream or sys.stdout
    if enabled is None:
        enabled = stream.isatty()
    return ProgressBar(stream) if enabled else ProgressLines(every_s)
