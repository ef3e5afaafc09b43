"""Resuming on another number of processes (elastic resume) without changing what the run trains.

A run's global batch, what one optimizer step trains on, is `batch_size` (per process) x processes
x `gradient_accumulation_steps`; the sample order is a function of the seed and the epoch alone, and
each optimizer step takes the next global batch of it. A checkpoint records its processes and
accumulation, so a resume on M processes from a checkpoint of N keeps the global batch by taking
`N x accumulation / M` accumulation steps (2 processes -> 1: twice the accumulation), and continues
a mid-epoch checkpoint at the same optimizer step of the epoch: the same global batches, in the same
order, as the uninterrupted run. Where M processes cannot divide the global batch, the resume is
refused before anything is written.

Exact (to float rounding) where an epoch's batches divide evenly among the processes: Accelerate
makes the processes' last batches even with duplicates of the first samples, and those depend on the
process count. The epoch's running sums of a mid-epoch checkpoint are added up on process 0;
stateful metrics and streams (each process reads its own share) resume only on the same count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from train.base.errors import ConfigError
from train.engine.metrics import EpochSums


@dataclass
class Rescaled:
    """A resume on another process count: the checkpoint's processes and accumulation, and the new."""

    processes: int
    accumulation: int
    now_processes: int
    now_accumulation: int

    def note(self, batch_size: Optional[int]) -> str:
        batches = self.processes * self.accumulation
        what = f"{batches * batch_size:,} samples" if batch_size else f"{batches} batches"
        return (f"resuming on {self.now_processes} process(es) from a checkpoint of {self.processes} "
                f"(accumulation {self.accumulation}): accumulation {self.now_accumulation} keeps the global batch "
                f"of {what}")


def keep_global_batch(position: dict, accelerator, path: Path, mid_epoch: bool) -> Optional[Rescaled]:
    """Set the accumulation that keeps the checkpoint's global batch on this run's processes, and
    move a mid-epoch position to the same optimizer step; None where nothing changes. Refuses
    (`ConfigError`) a change that cannot keep the run's meaning."""
    n, m = position["processes"], accelerator.num_processes
    a = position.get("accumulation", accelerator.gradient_accumulation_steps)
    if (n, a) == (m, accelerator.gradient_accumulation_steps):
        return None
    if (n * a) % m:
        raise ConfigError(f"checkpoint '{path}' was written by {n} process(es) x accumulation {a}: a global batch of "
                          f"{n * a} x batch_size, which {m} processes cannot share evenly; resume on a number of "
                          f"processes that divides {n * a}")
    now = n * a // m
    if mid_epoch:
        if position["batch"] % a:
            raise ConfigError(f"checkpoint '{path}' was taken within an accumulation window; resume it with {n} "
                              f"process(es), or from an epoch-end checkpoint")
        position["batch"] = position["batch"] // a * now
    accelerator.gradient_accumulation_steps = now
    return Rescaled(n, a, m, now)


def unfinished_share(path: Path, position: dict, accelerator) -> dict:
    """This process's share of the interrupted epoch (its running sums): its own file on the same
    process count; else process 0 continues the sums of all the checkpoint's processes, the others
    start from zero."""
    n, index = position["processes"], accelerator.process_index
    if n == accelerator.num_processes:
        return torch.load(path / f"rank-{index}.pt", weights_only=True)
    shares = [torch.load(path / f"rank-{i}.pt", weights_only=True) for i in range(n)]
    if any(share.get("stream") for share in shares):
        raise ConfigError(f"checkpoint '{path}' was taken mid-epoch of a stream by {n} process(es), each reading its "
                          f"own share; resume it with {n}, or from an epoch-end checkpoint")
    if any(share["sums"].get("metrics") for share in shares):
        raise ConfigError(f"checkpoint '{path}' was taken mid-epoch with stateful metrics, whose states cannot be "
                          f"merged; resume it with {n} process(es), or from an epoch-end checkpoint")
    return {**shares[0], "sums": EpochSums.merged_state([share["sums"] for share in shares], keep=index == 0)}
