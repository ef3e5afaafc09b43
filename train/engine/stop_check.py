"""The status check: one small collective that keeps every process in step about stopping.

Two things can make a run stop that only some processes see: a signal (SLURM's USR1, a
scheduler's TERM, a terminal's Ctrl-C) and a non-finite loss. Every `STATUS_EVERY` optimizer steps,
at each epoch's last batch and before each checkpoint, all processes add their flags together in one
reduction and act on the sum, so they stop at the same batch. Between checks the losses wait on the
device: the check is the only place this reads them back. A single process needs no agreement, so
a signal is acted on at the very next optimizer step.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch

from train.base.errors import NonFiniteLoss

STATUS_EVERY = 10  # optimizer steps between checks: each check is a device sync


class StatusCheck:
    def __init__(self, accelerator, watch_losses: bool):
        self.accelerator = accelerator
        self.watch_losses = watch_losses  # nonfinite=stop: remember losses until the next check
        self.requested = 0  # a signal number; set from a signal handler, so a plain assignment only
        self.stop_signal: Optional[str] = None  # its name, once every process agreed on it
        self._window: list = []  # (epoch, batch, loss on the device) since the last check
        self._checked_at = None

    def add_loss(self, epoch: int, batch: int, loss: torch.Tensor) -> None:
        if self.watch_losses:
            self._window.append((epoch, batch, loss))

    def due(self, step: int, last_batch: bool) -> bool:
        alone = self.accelerator.num_processes == 1
        return step % STATUS_EVERY == 0 or last_batch or (alone and self.requested != 0)

    def check(self, where) -> None:
        """Agree now (every process must call this at the same batch). Raises `NonFiniteLoss` for
        the first non-finite loss since the last check; sets `stop_signal` when a signal reached
        any process. `where` identifies the batch, so that a second call there costs nothing."""
        if self._checked_at == where:
            return
        self._checked_at = where
        window, self._window = self._window, []
        device = self.accelerator.device
        flags = torch.zeros(1 + len(window), dtype=torch.float64, device=device)
        flags[0] = float(self.requested)
        if window:  # 1 where a loss is not finite: after the sum, non-zero where any process had one
            losses = torch.stack([loss.detach().to(torch.float64) for _, _, loss in window])
            flags[1:] = (~torch.isfinite(losses)).to(torch.float64)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, "max")
        values = flags.tolist()
        bad = [i for i, v in enumerate(values[1:]) if v]
        if bad:
            epoch, batch, _ = window[bad[0]]
            raise NonFiniteLoss(f"the training loss became NaN or infinite at epoch {epoch} batch {batch}; "
                                f"lower optimizer.lr, set max_grad_norm, or set nonfinite=skip to drop such steps")
        if values[0] and self.stop_signal is None:
            self.stop_signal = signal.Signals(int(values[0])).name
