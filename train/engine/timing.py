"""Where an epoch's time goes: waiting for batches versus computing, samples/s, and FLOP/s.

The figures of a row are the slowest process's, so that every process holds the same history.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import torch


class EpochTimer:
    """Wraps the epoch's batches to time the waits for data; `row()` gives the timing columns."""

    def __init__(self):
        self.start = time.perf_counter()
        self.data_s = 0.0
        self.samples = 0  # this process's samples timed
        self.first_sample = None  # one input sample, for counting FLOPs after the epoch

    def batches(self, loader: Iterable, on_start: Optional[Callable[[], None]] = None, split: Callable = tuple):
        """The loader's batches as `split(batch)` = (inputs, targets); `on_start` runs once its
        iterator has produced the first one."""
        batches = iter(loader)
        while True:
            wait = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                if on_start is not None:
                    on_start()
                    on_start = None
            self.data_s += time.perf_counter() - wait
            features, labels = split(batch)
            if self.first_sample is None:
                self.first_sample = first_sample(features)
            self.samples += len(labels)
            yield features, labels

    def row(self, accelerator, flops_per_sample: Optional[float]) -> dict:
        seconds = time.perf_counter() - self.start
        data_s = self.data_s
        world = accelerator.num_processes
        if world > 1:
            times = torch.tensor([seconds, data_s], device=accelerator.device)
            seconds, data_s = accelerator.reduce(times, "max").tolist()
        # even batches: every process has the same count; a resumed epoch times its own part only
        rate = self.samples * world / seconds if seconds > 0 else float("nan")
        row = dict(epoch_s=seconds, data_s=data_s, compute_s=seconds - data_s, samples_per_s=rate)
        if flops_per_sample:
            row["flops_per_s"] = flops_per_sample * rate
        return row


def first_sample(features):
    """The first sample of a batch, kept as a batch of one: a tensor, a tuple or a dict of tensors."""
    from train.data.nested import apply

    return apply(lambda t: t[:1], features)


def count_flops(model: torch.nn.Module, call_model: Callable, sample, autocast) -> float:
    """FLOPs per training sample: torch's FLOP counter on a forward pass of one sample in eval
    mode (no RNG drawn, no gradients, outside any timer), times 3 for forward + backward, the
    usual estimate. Ops the counter does not know count as 0; a model it cannot trace gives 0."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        with torch.no_grad(), autocast(), FlopCounterMode(display=False) as counter:
            model.eval()
            call_model(model, sample)
        return 3.0 * counter.get_total_flops()
    except Exception:  # sharded models, custom kernels: no figure rather than no run
        return 0.0
    finally:
        model.train(was_training)
