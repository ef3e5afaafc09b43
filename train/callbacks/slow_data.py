"""The note that an epoch waited for its data too long."""

from __future__ import annotations

from train.engine.events import Callback


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
                       f"(data.num_workers, or your DataLoader's num_workers, where cores are free) or data held "
                       f"in memory may help", flush=True)
