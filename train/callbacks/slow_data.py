"""The note that an epoch waited for its data too long."""

from __future__ import annotations

from train.base.text import wrapped
from train.engine.events import Callback


class SlowDataWarning(Callback):
    """Says once when an epoch spent more than `threshold` of its time waiting for batches, and
    what may help: more loader workers only where `spare_cpus` (CPUs a process could still give to
    its loader) leaves room for them; otherwise data in memory or fewer processes per node."""

    def __init__(self, threshold: float = 0.2, print_fn=print, spare_cpus: int | None = None):
        self.threshold = threshold
        self.print = print_fn
        self.spare_cpus = spare_cpus  # None: unknown (a loader of another kind)
        self.said = False

    def on_epoch_end(self, epoch, row, run):
        share = row.get("data_s", 0.0) / row["epoch_s"] if row.get("epoch_s") else 0.0
        if share > self.threshold and not self.said and run.is_main_process:
            self.said = True
            if self.spare_cpus == 0:
                advice = ("every CPU of this node is busy already (the processes and their loader workers), so "
                          "more workers would not help; data held in memory (a set under "
                          "data.in_memory_limit_mb) or fewer processes per node may")
            else:
                room = f" ({self.spare_cpus} CPU(s) free per process)" if self.spare_cpus else " where cores are free"
                advice = (f"more loader workers (data.num_workers, or your DataLoader's num_workers){room} or data "
                          f"held in memory may help")
            self.print(wrapped(f"note: epoch {epoch} waited for data {share:.0%} of the time: {advice}"), flush=True)
