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
        # A fixed size whatever each process saw (a stream's shadow rounds add no loss): the signal,
        # and minus the first bad (epoch, batch) as one number, the largest over processes winning.
        none = -(2**62)
        first_bad = torch.tensor(none, dtype=torch.int64, device=device)
        if window:
            losses = torch.stack([loss.float() for _, _, loss in window])  # the loop's losses, detached already
            places = torch.tensor([-(epoch * 10**9 + batch) for epoch, batch, _ in window], device=device)
            first_bad = torch.where(~torch.isfinite(losses), places, torch.full_like(places, none)).max()
        flags = torch.stack([torch.tensor(int(self.requested), dtype=torch.int64, device=device), first_bad])
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, "max")
        requested, bad = flags.tolist()
        if bad != none:
            epoch, batch = divmod(-bad, 10**9)
            raise NonFiniteLoss(f"the training loss became NaN or infinite at epoch {epoch} batch {batch}; "
                                f"lower optimizer.lr, set max_grad_norm, or set nonfinite=skip to drop such steps")
        if requested and self.stop_signal is None:
            self.stop_signal = signal.Signals(int(requested)).name
