"""`history.csv`, rewritten after each epoch."""

from __future__ import annotations

from pathlib import Path

from train.engine.events import Callback


class HistoryCSV(Callback):
    """Rewrites `<dir>/history.csv` after each epoch (atomically, by the main process; every
    process learns whether it could, so that a full disk ends them all with `WriteError`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, run):
        from train.engine.devices import write_on_main

        write_on_main(run.accelerator, lambda: run.history.to_csv(self.path), self.path)
