"""Progress on the main process: a tqdm bar on a terminal; plain lines for log files.

On a terminal the bar redraws in place and shows the running loss and metrics every
`log_step_freq` steps. When stdout is not a terminal (SLURM, CI, `| tee`) carriage-return
redraws would bury a log file, so one plain line is written every `log_every_s` seconds instead:
epoch, step/total, loss, samples/s and ETA.
"""

from __future__ import annotations

import sys
import time

from .callbacks import Callback


def _fmt_s(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar(Callback):
    """A tqdm bar per epoch (main process only)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bar = None

    def on_epoch_begin(self, epoch):
        if not self.loop.is_main_process:
            return
        from tqdm.auto import tqdm

        last = self.loop.epochs_planned[1]
        self.bar = tqdm(total=self.loop.steps_per_epoch, desc=f"epoch {epoch}/{last}", unit="step",
                        leave=False, dynamic_ncols=True, file=self.stream)

    def on_train_batch_end(self, step):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, epoch, step, logs):
        if self.bar is not None:
            elapsed = self.bar.format_dict["elapsed"]
            samples = self.loop._sums.count * self.loop.accelerator.num_processes
            shown = {k: f"{v:.4f}" for k, v in logs.items()}
            shown["samples/s"] = f"{samples / elapsed:.0f}" if elapsed > 0 else "-"
            self.bar.set_postfix(shown, refresh=False)

    def on_epoch_end(self, epoch, row):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressLines(Callback):
    """One line every `every_s` seconds, without carriage returns (main process only)."""

    def __init__(self, every_s: float = 30.0, print_fn=print):
        self.every_s = every_s
        self.print = print_fn

    def on_epoch_begin(self, epoch):
        self.epoch = epoch
        self.start = self.last = time.monotonic()

    def on_train_batch_end(self, step):
        now = time.monotonic()
        if now - self.last < self.every_s or not self.loop.is_main_process:
            return  # the common case costs one clock read
        self.last = now
        loop = self.loop
        total = loop.steps_per_epoch
        logs = loop.running_logs()
        samples = loop._sums.count * loop.accelerator.num_processes
        rate = samples / (now - self.start)
        eta = (now - self.start) / step * (total - step)
        values = " ".join(f"{k} {v:.4f}" for k, v in logs.items())
        self.print(f"epoch {self.epoch}/{loop.epochs_planned[1]} step {step}/{total} {values} "
                   f"{rate:.0f} samples/s eta {_fmt_s(eta)}", flush=True)


def progress_for(enabled, every_s: float, stream=None) -> Callback:
    """A bar when `enabled` (None: when `stream` is a terminal), else plain lines."""
    stream = stream or sys.stdout
    if enabled is None:
        enabled = stream.isatty()
    return ProgressBar(stream) if enabled else ProgressLines(every_s)
