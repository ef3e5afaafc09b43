"""Callbacks: small objects with one job each, told what the loop does through events.

A hook receives what it names among the data of its event, so a callback reads nothing of the
loop's insides (Keras' `on_epoch_end(self, epoch, logs)` works as it is):

| hook | may take |
|---|---|
| `on_train_begin` | `run` |
| `on_epoch_begin` | `epoch`, `run` |
| `on_train_batch_end` | `batch` (of the epoch, from 1), `step` (optimizer steps so far), `run` |
| `on_log` | `epoch`, `batch`, `step`, `logs` (this process's running averages), `run` |
| `on_epoch_end` | `epoch`, `logs` (the history row, the same on every process; also as `row`), `step`, `run` |
| `on_interrupt` | `epoch`, `batch`, `step`, `run` (all processes agreed to stop after a signal) |
| `on_train_end` | `logs` (the last row, or {}), `run` |

`run` is a read-only `RunView`: the process index and count, `is_main_process`, the output folder,
the model, where the loop is, the history; `run.stop_training()` asks the loop to stop after the
current batch. `on_train_batch_end` runs every batch: keep it cheap, read nothing from the device.
Every hook runs on every process; a callback with `main_process_only = True` runs on the main
process alone (one that prints or writes files), and `train.print` prints once per job. A callback
with a `state_key` and `state_dict()` / `load_state_dict()` has its state saved in checkpoints and
restored on resume.
"""

from __future__ import annotations

import builtins
import inspect
import os
from pathlib import Path

from train.base.errors import UserError

HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_end", "on_log", "on_epoch_end", "on_interrupt",
         "on_train_end")
ARGUMENTS = {"on_train_begin": ("run",), "on_epoch_begin": ("epoch", "run"),
             "on_train_batch_end": ("batch", "step", "run"), "on_log": ("epoch", "batch", "step", "logs", "run"),
             "on_epoch_end": ("epoch", "logs", "row", "step", "run"), "on_interrupt": ("epoch", "batch", "step", "run"),
             "on_train_end": ("logs", "run")}


class Callback:
    """Override the hooks you need, naming the arguments you want (see the module docstring)."""

    main_process_only = False

    def on_train_begin(self, run): ...
    def on_epoch_begin(self, epoch, run): ...
    def on_train_batch_end(self, batch, step, run): ...
    def on_log(self, epoch, batch, logs, run): ...
    def on_epoch_end(self, epoch, logs, run): ...
    def on_interrupt(self, epoch, batch, run): ...
    def on_train_end(self, run): ...


def print_once(*args, **kwargs) -> None:
    """`print` on the job's main process only (the global rank 0), so that N processes print once."""
    if int(os.environ.get("RANK", "0")) == 0:
        kwargs.setdefault("flush", True)
        builtins.print(*args, **kwargs)


class RunView:
    """What a callback may read of the run, read-only, and the one thing it may ask."""

    def __init__(self, loop, output_dir=None):
        self._loop = loop
        self.output_dir = Path(output_dir) if output_dir else None

    accelerator = property(lambda self: self._loop.accelerator)
    process_index = property(lambda self: self._loop.accelerator.process_index)
    num_processes = property(lambda self: self._loop.accelerator.num_processes)
    is_main_process = property(lambda self: self._loop.accelerator.is_main_process)
    epoch = property(lambda self: self._loop.epoch)
    batch = property(lambda self: self._loop.batch)
    step = property(lambda self: self._loop.step)
    stepped = property(lambda self: self._loop.stepped, doc="whether the last batch ended an optimizer step")
    epochs = property(lambda self: self._loop.last_epoch, doc="the epoch this fit trains to")
    batches_per_epoch = property(lambda self: self._loop.batches_per_epoch)
    samples_seen = property(lambda self: self._loop.samples_seen)
    history = property(lambda self: self._loop.history, doc="the epochs so far (`.rows`, `.frame()`)")
    stop_signal = property(lambda self: self._loop.status.stop_signal)

    @property
    def model(self):
        """The model being trained, without its wrappers (DDP, torch.compile)."""
        return self._loop.accelerator.unwrap_model(self._loop.model, keep_torch_compile=False)

    def running_logs(self) -> dict:
        """This process's running averages in the current epoch (a device sync: at log points only)."""
        return self._loop.running_logs()

    def stop_training(self) -> None:
        self._loop.stop_training = True


class CallbackList:
    """Dispatches each event to the callbacks that override its hook, with the arguments each hook
    names; a hook nobody overrides is an empty tuple, so it costs one loop over nothing per step."""

    def __init__(self, callbacks, loop, output_dir=None):
        self.run = RunView(loop, output_dir)
        main = self.run.is_main_process
        self.callbacks = [cb for cb in callbacks if main or not getattr(cb, "main_process_only", False)]
        for hook in HOOKS:
            calls = tuple(self._bind(cb, hook) for cb in self.callbacks  # subclasses and duck-typed objects
                          if getattr(type(cb), hook, None) not in (None, getattr(Callback, hook)))
            setattr(self, hook, self._dispatch(calls))

    @staticmethod
    def _bind(cb, hook):
        fn = getattr(cb, hook)
        names = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name in ARGUMENTS[hook]:
                names.append(p.name)
            elif p.default is p.empty:
                raise UserError(f"callback {type(cb).__name__}.{hook} takes '{p.name}'; it may take "
                                f"{', '.join(ARGUMENTS[hook])}")
        return fn, tuple(names)

    def _dispatch(self, calls):
        def call(**values):
            values["run"] = self.run
            for fn, names in calls:
                fn(**{n: values[n] for n in names})
        return call
