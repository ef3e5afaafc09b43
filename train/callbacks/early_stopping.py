"""Early stopping: the end of training when a history column stops improving."""

from __future__ import annotations

from train.config.monitor import Monitor
from train.distributed.strategy import put_whole_weights, whole_weights
from train.engine.events import Callback


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
                self.best_weights = whole_weights(run.model)  # a sharded model's gathered on the main process
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
            # the main process's copy (gathered at the save, or from callbacks.pt on a resume) sent to the others
            put_whole_weights(run.model, self.best_weights)
            if run.is_main_process:
                self.print(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.6g})",
                           flush=True)
