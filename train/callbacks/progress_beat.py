"""The supervisor's view of progress: a beat after every batch (written at most twice a second)."""

from __future__ import annotations

from train.engine.events import Callback
from train.supervision.reports import beat, record_ready, supervised


class ProgressBeat(Callback):
    """Tells a supervisor (`train/supervisor.py`) where this process is after each batch, so that it
    can name a process that stopped making progress and measure what a failure cost. Added by the
    run only under a supervisor; a clock read per batch, a small file write every half second."""

    def on_train_begin(self):  # the state is back (a checkpoint loaded, or none to load): a restart's phase
        record_ready()

    def on_train_batch_end(self, batch, step, run):
        beat(step, run.epoch, batch)


def progress_beats() -> list:
    """[ProgressBeat()] under a supervisor, else []."""
    return [ProgressBeat()] if supervised() else []
