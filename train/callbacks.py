"""Callbacks: small objects with one job each, told what the loop does through events.

Hooks (all optional): `on_train_begin()`, `on_epoch_begin(epoch)`, `on_train_batch_end(step)`
(every step: keep it cheap, it must not read from the device), `on_log(epoch, step, logs)` (every
`log_step_freq` steps, with this process's running averages), `on_epoch_end(epoch, row)` (with
the history row, identical on every process), `on_interrupt(epoch, step)` (all processes agreed
to stop after a signal; the loop raises `Preempted` right after) and `on_train_end()`. A callback
talks back to the loop only by setting `loop.stop_training = True`. A callback with a `state_key`
and `state_dict()` / `load_state_dict()` has its state saved in checkpoints. Anything that prints
or writes checks `self.loop.is_main_process`: one process speaks for the job.
"""

from __future__ import annotations

from pathlib import Path

HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_end", "on_log", "on_epoch_end", "on_interrupt",
         "on_train_end")


class Callback:
    loop = None  # set by CallbackList before the first event

    def on_train_begin(self): ...
    def on_epoch_begin(self, epoch): ...
    def on_train_batch_end(self, step): ...
    def on_log(self, epoch, step, logs): ...
    def on_epoch_end(self, epoch, row): ...
    def on_interrupt(self, epoch, step): ...
    def on_train_end(self): ...


class CallbackList:
    """Dispatches each event to the callbacks that override its hook; a hook nobody overrides is
    an empty tuple, so it costs one loop over nothing per step."""

    def __init__(self, callbacks, loop):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.loop = loop
        for hook in HOOKS:
            bound = tuple(getattr(cb, hook) for cb in self.callbacks  # subclasses and duck-typed objects
                          if getattr(type(cb), hook, None) not in (None, getattr(Callback, hook)))
            setattr(self, hook, self._dispatch(bound))

    @staticmethod
    def _dispatch(bound):
        def call(*args):
            for fn in bound:
                fn(*args)
        return call


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if (abs(value) >= 1e4 or (value and abs(value) < 1e-3)) else f"{value:.4f}"
    return str(value)


class EpochTable(Callback):
    """Prints one row per epoch as an aligned table (main process only)."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self.columns = None

    def on_epoch_end(self, epoch, row):
        if not self.loop.is_main_process:
            return
        if self.columns is None:
            self.columns = list(row)
            self.widths = [max(len(c), 9) for c in self.columns]
            self.print("  ".join(c.rjust(w) for c, w in zip(self.columns, self.widths)), flush=True)
        self.print("  ".join(_fmt(row.get(c, "")).rjust(w) for c, w in zip(self.columns, self.widths)),
                   flush=True)


class StepLog(Callback):
    """The tutorial's step lines, `[step = 100] loss: 0.286, accuracy: 0.914` (main process only)."""

    def __init__(self, print_fn=print):
        self.print = print_fn

    def on_log(self, epoch, step, logs):
        if self.loop.is_main_process:
            values = ", ".join(f"{k}: {v:.3f}" for k, v in logs.items())
            self.print(f"[step = {step}] {values}", flush=True)


class HistoryCSV(Callback):
    """Rewrites `<dir>/history.csv` after each epoch (atomically; main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, epoch, row):
        if self.loop.is_main_process:
            self.loop.history.to_csv(self.path)



class SlowDataWarning(Callback):
    """Says once when an epoch spent more than `threshold` of its time waiting for batches."""

    def __init__(self, threshold: float = 0.2, print_fn=print):
        self.threshold = threshold
        self.print = print_fn
        self.said = False

    def on_epoch_end(self, epoch, row):
        share = row.get("data_s", 0.0) / row["epoch_s"] if row.get("epoch_s") else 0.0
        if share > self.threshold and not self.said and self.loop.is_main_process:
            self.said = True
            self.print(f"note: epoch {epoch} waited for data {share:.0%} of the time; raise data.num_workers "
                       f"or keep the data in memory (data.in_memory_limit_mb)", flush=True)


class EarlyStopping(Callback):
    """Stops training when `monitor` (a history column) has not improved by more than
    `min_delta` for `patience` epochs; with `restore_best`, ends with the best epoch's weights."""

    state_key = "early_stopping"

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0,
                 restore_best: bool = False, print_fn=print):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
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

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self):
        if self.stopped_epoch:  # resumed from a run that had already stopped here
            self.loop.stop_training = True

    def on_epoch_end(self, epoch, row):
        value = row[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                model = self.loop.accelerator.unwrap_model(self.loop.model, keep_torch_compile=False)
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.loop.stop_training = True
            if self.loop.is_main_process:
                self.print(f"early stopping after epoch {epoch}: {self.monitor} has not improved for {self.wait} "
                           f"epoch(s); best {self.best:.6g} at epoch {self.best_epoch}", flush=True)

    def on_train_end(self):
        last = self.loop.history.rows[-1]["epoch"] if len(self.loop.history) else 0
        if self.restore_best and self.best_weights is not None and self.best_epoch != last:
            model = self.loop.accelerator.unwrap_model(self.loop.model, keep_torch_compile=False)
            model.load_state_dict(self.best_weights)
            if self.loop.is_main_process:
                self.print(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.6g})",
                           flush=True)


class Preemption(Callback):
    """Turns SIGUSR1 and SIGTERM (what SLURM and most schedulers send before they stop a job)
    into a request the loop acts on at the next status check: all processes agree, a checkpoint
    is saved, and the run exits with `Preempted` (exit code 75). The handler only assigns a
    flag: no I/O or locks inside a signal handler. A second signal changes nothing."""

    def __init__(self, signals=("SIGUSR1", "SIGTERM")):
        self.signals = signals
        self.previous = {}

    def _handler(self, signum, frame):
        self.loop.interrupt_requested = signum

    def on_train_begin(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # Python runs handlers in the main thread only
        for name in self.signals:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handler)

    def on_train_end(self):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
