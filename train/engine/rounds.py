"""An epoch's batches as rounds: in each round every process takes one batch together, and all of
them know when the epoch ends, so that they stay in step in every collective.

A map-style data set prepared by Accelerate gives every process the same number of batches (its
last batches are made even with padding duplicates, which evaluation leaves out), so a round is
simply the next batch and the last round is known from the length. A stream (an `IterableDataset`,
`train.data.streams`) gives each process its own share, which can end a batch earlier on some
processes; and its length is unknown. There, each round every process says whether it has a batch
(one small reduction on the CPU, `train.engine.devices.host_group`: no device sync), one round ahead, so
that the last round is known before it is trained on. A process whose share has ended while others
still have a batch takes part with a *shadow* round (`Round.batch is None`): the loop runs its last
batch again with no weight, so that every collective (gradient all-reduce, a sharded forward) sees
every process, and nothing counts twice.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from train.data.batches import batch_rows
from train.data.nested import tensors


@dataclass
class Round:
    batch: Optional[tuple]  # (inputs, targets) of this process, or None: a shadow round
    last: bool  # the epoch's last round, on every process
    rows: int = 0  # samples in this round on all processes (streams; 0: not counted)
    targets: object = None  # what this process's loss is a mean over, where it matters (Loop.targets_of)


def map_rounds(batches, total: int, done: int = 0) -> Iterator[Round]:
    """Rounds of a loader that gives every process the same number of batches, `total` in the epoch
    (`done` of them already trained)."""
    index = done
    for batch in batches:
        index += 1
        yield Round(batch, index >= total)
        if index >= total:
            return


def stream_rounds(batches, group, world: int, cap: Optional[int] = None, done: int = 0) -> Iterator[Round]:
    """Rounds of a stream's loader (see the module docstring): until no process has a batch left, or
    `cap` rounds of the epoch (`done` already trained). A process whose share is empty while others
    have batches has nothing to run a shadow round with: every process stops with one line."""
    from train.base.errors import DataError

    it = iter(batches)
    index, seen = done, done > 0

    def fetch():
        batch = next(it, None)
        empty = batch is None and not seen  # this process has had no batch at all this epoch
        have = torch.tensor([batch is not None, batch_rows(batch[0]) if batch is not None else 0, empty],
                            dtype=torch.int64)
        if world > 1:
            torch.distributed.all_reduce(have, group=group)
        processes, rows, empty = have.tolist()
        if empty and processes:
            raise DataError(f"the stream gave {empty} process(es) no sample while others had some: give it more "
                            f"samples than processes x batch size, or run fewer processes")
        return batch, processes, rows

    batch, processes, rows = fetch()
    while processes and (cap is None or index < cap):
        index += 1
        seen = seen or batch is not None
        following, next_processes, next_rows = fetch() if cap is None or index < cap else (None, 0, 0)
        yield Round(batch, next_processes == 0, rows)
        batch, processes, rows = following, next_processes, next_rows


def skip_stream(batches, consumed: int, fingerprint: Optional[int], split=tuple):
    """The stream's loader with its first `consumed` batches read and dropped (a resumed epoch):
    (the rest of its batches, the last batch dropped (as `split` makes it), what went wrong or None).
    Wrong is a stream that gives other samples when read again (the last batch dropped is not the
    batch the interrupted run trained on last): it cannot resume exactly."""
    it = iter(batches)
    last = None
    for _ in range(consumed):
        last = next(it, None)
        if last is None:
            break
    last = split(last) if last is not None else None
    problem = None
    if consumed and (last is None or (fingerprint is not None and batch_fingerprint(last) != fingerprint)):
        problem = (f"gave other samples when read again to resume mid-epoch (batch {consumed} "
                   f"{'is missing' if last is None else 'differs'}): it cannot resume exactly; make its order a "
                   f"function of the epoch (set_epoch) and its seed, set replayable = False on it (then checkpoints "
                   f"are taken at epoch ends), or resume from an epoch-end checkpoint")
    return it, last, problem


def batch_fingerprint(batch) -> int:
    """A CRC-32 of a batch's tensors (a device-to-host copy: taken at checkpoints only)."""
    crc = 0
    for t in tensors(batch):
        crc = zlib.crc32(t.detach().to("cpu").contiguous().numpy().tobytes(), crc)
    return crc


def batches_per_epoch(dl, steps_per_epoch: Optional[int], accumulation: int) -> Optional[int]:
    """Batches per epoch per process: the loader's, at most `steps_per_epoch` optimizer steps' worth;
    None for a stream of unknown length without `steps_per_epoch`."""
    cap = steps_per_epoch * accumulation if steps_per_epoch else None
    if isinstance(dl.dataset, torch.utils.data.IterableDataset):
        return cap
    return len(dl) if cap is None else min(cap, len(dl))


def windows(rounds, accumulation: int, done: int = 0):
    """Rounds grouped into the windows that each end in one optimizer step: every `accumulation`
    batches of the epoch (`done` already trained), and at its last round."""
    window, index = [], done
    for r in rounds:
        window.append(r)
        index += 1
        if index % accumulation == 0 or r.last:
            yield window
            window = []
    if window:
        yield window


def set_epoch(dl, epoch: int) -> None:
    """The epoch for the loader's sampler and for its data set: Accelerate tells the data set only
    when the sampler has no `set_epoch`, and per-sample draws (`train.data.sample_draws`) are seeded by it."""
    dl.set_epoch(epoch)
    if hasattr(getattr(dl, "dataset", None), "set_epoch"):
        dl.dataset.set_epoch(epoch)
