"""Where an epoch's time goes: waiting for batches versus computing, samples/s, tokens/s, FLOP/s,
MFU and peak memory.

The times of a row are the slowest process's, the memory the largest process's and the counts all
processes' together, so that every process holds the same history.
"""

from __future__ import annotations

import resource
import time
from typing import Callable, Iterable, Optional

import torch


class EpochTimer:
    """Wraps the epoch's batches to time the waits for data; `row()` gives the timing columns."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":  # the epoch's own peak (a CPU's peak resident set cannot be reset
            torch.cuda.reset_peak_memory_stats(device)  # without also resetting what others read of it)
        self.start = time.perf_counter()
        self.data_s = 0.0
        self.samples = 0  # this process's samples timed
        self.tokens: list = []  # this process's real tokens per batch (device tensors or ints), where batches have them
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
            tokens = real_tokens(features)
            if tokens is not None:
                self.tokens.append(tokens)
            yield features, labels

    def row(self, accelerator, flops_per_sample: Optional[float], peak_flops: Optional[float] = None) -> dict:
        """The epoch's timing columns; `peak_flops`: one device's (train.engine.peak_flops), for `mfu`."""
        seconds = time.perf_counter() - self.start
        wide = torch.float32 if accelerator.device.type == "mps" else torch.float64  # MPS has no float64
        figures = torch.tensor([seconds, self.data_s, peak_memory_mb(self.device), float(len(self.tokens) > 0),
                                flops_per_sample or 0.0, peak_flops or 0.0], dtype=wide, device=accelerator.device)
        tokens = torch.tensor([sum(t for t in self.tokens if isinstance(t, int))], dtype=wide, device=accelerator.device)
        counted = [t for t in self.tokens if not isinstance(t, int)]
        if counted:  # the masks' sums of every batch, added on the device in one go at the epoch's end
            tokens += torch.stack(counted).sum().to(wide)
        world = accelerator.num_processes
        if world > 1:  # one collective for every figure: the slowest time, the largest memory, all tokens
            every = accelerator.gather(torch.cat([figures, tokens])).reshape(world, -1)
            # FLOPs and the device's peak are the main process's, so that every process writes the same row
            figures = torch.cat([every[:, :4].max(dim=0).values, every[0, 4:6]])
            tokens = every[:, 6:].sum(dim=0)
        seconds, data_s, memory_mb, has_tokens, flops_per_sample, peak_flops = figures.tolist()
        # even batches: every process has the same count; a resumed epoch times its own part only
        rate = self.samples * world / seconds if seconds > 0 else float("nan")
        row = dict(epoch_s=seconds, data_s=data_s, compute_s=seconds - data_s, samples_per_s=rate)
        if has_tokens:
            row["tokens_per_s"] = tokens.item() / seconds if seconds > 0 else float("nan")
        if flops_per_sample:
            row["flops_per_s"] = flops_per_sample * rate
            if peak_flops:
                row["mfu"] = row["flops_per_s"] / (peak_flops * world)
        row["max_memory_mb"] = memory_mb
        return row


def real_tokens(features):
    """The tokens of a batch that are not padding: its `attention_mask`'s ones (a device tensor: no
    read of the device here), else every `input_ids` entry; None for batches without tokens."""
    if not isinstance(features, dict):
        return None
    mask = features.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return mask.sum()
    ids = features.get("input_ids")
    return ids.numel() if isinstance(ids, torch.Tensor) else None


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory in MiB: CUDA's peak allocated this epoch on a GPU, else the peak
    resident set of the process so far (Linux reports it in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
