"""The tutorial's step lines, `[step = 100] loss: 0.286, accuracy: 0.914` (main process only)."""

from __future__ import annotations

from train.engine.events import Callback


class StepLog(Callback):
    """The tutorial's step lines, `[step = 100] loss: 0.286, accuracy: 0.914` (main process only)."""

    def __init__(self, print_fn=print):
        self.print = print_fn

    def on_log(self, batch, logs, run):
        if run.is_main_process:
            values = ", ".join(f"{k}: {v:.3f}" for k, v in logs.items())
            self.print(f"[step = {batch}] {values}", flush=True)
