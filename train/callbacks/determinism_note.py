"""The note naming the ops that ran without a deterministic kernel."""

from __future__ import annotations

from train.base.text import wrapped
from train.distributed.determinism import ops_without_deterministic_kernel
from train.engine.events import Callback


class DeterminismNote(Callback):
    """With `deterministic: true`, names once each op that had no deterministic kernel (torch would
    warn at every call): at the first log point and at each epoch's end, never per step."""

    main_process_only = True

    def __init__(self, print_fn=print):
        self.print = print_fn
        self.named: list[str] = []
        self.before: dict[str, int] = {}  # the process's counts when this run began (an earlier run's ops)

    def on_train_begin(self, run):
        self.before = ops_without_deterministic_kernel()

    def on_log(self, epoch, batch, logs, run):
        self._name_new()

    def on_epoch_end(self, epoch, run):
        self._name_new()

    def _name_new(self) -> None:
        now = ops_without_deterministic_kernel()
        new = [op for op, calls in now.items() if calls > self.before.get(op, 0) and op not in self.named]
        if new:
            self.named += new
            self.print(wrapped(f"note: deterministic: {', '.join(new)} {'has' if len(new) == 1 else 'have'} no "
                               f"deterministic kernel in torch; runs and resumes may differ in the bits where "
                               f"{'it is' if len(new) == 1 else 'they are'} used"), flush=True)
