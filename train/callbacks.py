"""Callbacks: small objects with one job each, told what the loop does through events.

Hooks (all optional): `on_train_begin()`, `on_epoch_begin(epoch)`, `on_train_batch_end(step)`
(every step: keep it cheap, it must not read from the device), `on_log(epoch, step, logs)` (every
`log_step_freq` steps, with this process's running averages), `on_epoch_end(epoch, row)` (with
the history row, identical on every process) and `on_train_end()`. A callback talks back to the
loop only by setting `loop.stop_training = True`. Anything that prints or writes checks
`self.loop.is_main_process`: one process speaks for the job.
"""

from __future__ import annotations

from pathlib import Path

HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_end", "on_log", "on_epoch_end", "on_train_end")


class Callback:
    loop = None  # set by CallbackList before the first event

    def on_train_begin(self): ...
    def on_epoch_begin(self, epoch): ...
    def on_train_batch_end(self, step): ...
    def on_log(self, epoch, step, logs): ...
    def on_epoch_end(self, epoch, row): ...
    def on_train_end(self): ...


class CallbackList:
    """Dispatches each event to the callbacks that override its hook; a hook nobody overrides is
    an empty tuple, so it costs one loop over nothing per step."""

    def __init__(self, callbacks, loop):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.loop = loop
        for hook in HOOKS:
            bound = tuple(getattr(cb, hook) for cb in self.callbacks
                          if getattr(type(cb), hook, None) is not getattr(Callback, hook))
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
