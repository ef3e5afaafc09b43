"""The callbacks every run uses: the epoch table, the tutorial's step lines, `history.csv`, the
slow-data note, early stopping and the stop signals. Each is a `train.callbacks.Callback` with one
job, reading the run only through the hooks' arguments."""

from __future__ import annotations

from pathlib import Path

from train.config.monitor import Monitor
from train.engine.events import Callback

WIDTH = 100  # no printed line wider than this: a terminal of 100 columns shows each row whole

# how the table shows each column (every column stays in history.csv): header, format
SHOWN = {"epoch": ("epoch", "{:d}"), "lr": ("lr", "{:.3g}"), "skipped_steps": ("skipped", "{:d}"),
         "epoch_s": ("time", "{:.1f}s"), "samples_per_s": ("samples/s", "{:,.0f}")}
TIMING_SHOWN = ("epoch_s", "samples_per_s")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if (abs(value) >= 1e4 or (value and abs(value) < 1e-3)) else f"{value:.4f}"
    return str(value)


class EpochTable(Callback):
    """Prints one row per epoch as an aligned table within 100 columns (main process only): the
    quantities, lr and, where they fit, the epoch's time and samples/s."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self.columns = None

    def _choose(self, row) -> list[tuple[str, str, int]]:
        from train.engine.history import TIMING_COLUMNS

        names = [c for c in row if c not in TIMING_COLUMNS or c in TIMING_SHOWN]
        for drop_timing in (False, True):
            chosen = [c for c in names if not (drop_timing and c in TIMING_COLUMNS)]
            columns = [(c, SHOWN.get(c, (c, None))[0], 0) for c in chosen]
            columns = [(c, h, max(len(h), 8 if c != "epoch" else 5)) for c, h, _ in columns]
            if sum(w for *_, w in columns) + 2 * (len(columns) - 1) <= WIDTH:
                return columns
        return []  # too many columns for one line: rows as wrapped name=value pairs

    def _cell(self, column, value) -> str:
        fmt = SHOWN.get(column, (None, None))[1]
        try:
            return fmt.format(value) if fmt else _fmt(value)
        except (ValueError, TypeError):
            return _fmt(value)

    def on_epoch_end(self, row, run):
        if not run.is_main_process:
            return
        if self.columns is None:
            self.columns = self._choose(row)
            if self.columns:
                self.print("  ".join(h.rjust(w) for _, h, w in self.columns), flush=True)
        if self.columns:
            self.print("  ".join(self._cell(c, row.get(c, "")).rjust(w) for c, _, w in self.columns), flush=True)
        else:
            import textwrap

            pairs = " ".join(f"{k}={self._cell(k, v)}" for k, v in row.items())
            self.print(textwrap.fill(pairs, WIDTH, subsequent_indent="    "), flush=True)


class StepLog(Callback):
    """The tutorial's step lines, `[step = 100] loss: 0.286, accuracy: 0.914` (main process only)."""

    def __init__(self, print_fn=print):
        self.print = print_fn

    def on_log(self, batch, logs, run):
        if run.is_main_process:
            values = ", ".join(f"{k}: {v:.3f}" for k, v in logs.items())
            self.print(f"[step = {batch}] {values}", flush=True)


class HistoryCSV(Callback):
    """Rewrites `<dir>/history.csv` after each epoch (atomically, by the main process; every
    process learns whether it could, so that a full disk ends them all with `WriteError`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, run):
        from train.engine.devices import write_on_main

        write_on_main(run.accelerator, lambda: run.history.to_csv(self.path), self.path)



class SlowDataWarning(Callback):
    """Says once when an epoch spent more than `threshold` of its time waiting for batches."""

    def __init__(self, threshold: float = 0.2, print_fn=print):
        self.threshold = threshold
        self.print = print_fn
        self.said = False

    def on_epoch_end(self, epoch, row, run):
        share = row.get("data_s", 0.0) / row["epoch_s"] if row.get("epoch_s") else 0.0
        if share > self.threshold and not self.said and run.is_main_process:
            self.said = True
            self.print(f"note: epoch {epoch} waited for data {share:.0%} of the time: more loader workers "
                       f"(data.num_workers) or data held in memory would help", flush=True)


class EarlyStopping(Callback):
    """Stops training when `monitor` (a history column) has not improved by more than
    `min_delta` for `patience` epochs; with `restore_best`, ends with the best epoch's weights."""

    state_key = "early_stopping"

    def __init__(self, monitor: str, mode: str = "auto", patience: int = 3, min_delta: float = 0.0,
                 restore_best: bool = False, print_fn=print):
        self.monitor, self.patience = monitor, patience
        self.rule = Monitor(monitor, mode, min_delta)  # which way, and by how much, is an improvement
        self.restore_best = restore_best
        self.print = print_fn
        self.best = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None  # on the CPU, only with restore_best

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def on_train_begin(self, run):
        if self.stopped_epoch:  # resumed from a run that had already stopped here
            run.stop_training()

    def on_epoch_end(self, epoch, row, run):
        value = row[self.monitor]
        if self.rule.improved(value, self.best):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            run.stop_training()
            if run.is_main_process:
                self.print(f"early stopping after epoch {epoch}: {self.monitor} has not improved for {self.wait} "
                           f"epoch(s); best {self.best:.6g} at epoch {self.best_epoch}", flush=True)

    def on_train_end(self, run):
        last = run.history.rows[-1]["epoch"] if len(run.history) else 0
        if self.restore_best and self.best_weights is not None and self.best_epoch != last:
            run.model.load_state_dict(self.best_weights)
            if run.is_main_process:
                self.print(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.6g})",
                           flush=True)


class StopSignals(Callback):
    """Turns SIGUSR1 and SIGTERM (what SLURM and most schedulers send before they stop a job) and
    SIGINT (Ctrl-C) into a request the loop acts on at its next status check: all processes agree,
    a checkpoint is saved, and the run ends with `Preempted` (exit 75) or `Interrupted` (exit 130).
    The handler only assigns a number: no I/O or locks inside a signal handler. A second Ctrl-C
    ends the process at once (exit 130), without saving: the last complete checkpoint stays
    `latest`, since a save only moves `latest` once it is whole."""

    SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")

    def __init__(self, print_fn=None):
        import sys

        self.print = print_fn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.previous = {}
        self.interrupts = 0

    def install(self, request_stop) -> None:
        """Catch the signals now, passing each to `request_stop(signum)` (the loop's; the run calls
        this before anything slow, so that a signal during start-up is not lost: the loop acts on
        it at its first optimizer step)."""
        import signal
        import threading

        self.request_stop = request_stop
        if self.previous or threading.current_thread() is not threading.main_thread():
            return  # installed already; or not the main thread (Python runs handlers in it only)
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        import os
        import signal

        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                os.write(2, b"\ninterrupted again: stopping now, without saving; the last complete checkpoint "
                            b"stays latest\n")
                os._exit(130)
        self.request_stop(signum)

    def on_interrupt(self, epoch, batch, run):
        if run.stop_signal == "SIGINT" and run.is_main_process:
            self.print(f"interrupted at epoch {epoch} batch {batch}: saving a checkpoint; run the same command "
                       f"to resume")

    def on_train_end(self):
        self.restore()

    def restore(self):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
