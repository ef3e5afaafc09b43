"""Streams: data sets without an index (`torch.utils.data.IterableDataset`: a generator of your own,
or a Hugging Face `datasets.IterableDataset`), split across processes and loader workers without
duplicates or gaps.

Accelerate would shard a stream by having every process read the whole of it and pad the last
batches with repeated samples (and with `dispatch_batches`, which it takes by default for
streams, only batches of one shape work on several processes). Here each process reads its own
share instead, and the loop takes care of the shares ending at different batches
(`train.engine.rounds`):

- a Hugging Face stream is split by `datasets.distributed.split_dataset_by_node` (whole shards per
  process where they divide evenly, else every N-th sample), and splits itself across loader
  workers by its shards;
- any other stream must yield the same samples in the same order each time it is iterated (for
  the epoch its `set_epoch` was told, when it has one), and must not split itself across workers:
  sample g goes to process `g % processes`, and within it to worker `(g // processes) % workers`.

Random draws a stream makes are its own: each worker is seeded from (seed, epoch, process,
worker); without workers the stream draws from generators of its own, swapped in around each
sample, so that training's draws (dropout) do not depend on how many samples were read. So a
stream read again for the same epoch gives the same samples, which is how a run resumes
mid-epoch: it reads and drops the batches already trained on (`train.engine.rounds.skip_stream`). A
stream that cannot give the same samples again says so with `replayable = False`; then checkpoints
are taken at epoch ends only. This module knows nothing of models or the loop.
"""

from __future__ import annotations

import random
import sys
from itertools import islice
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from train.data.sample_draws import sample_seed, seed_all
from train.base.errors import DataError


def is_stream(dataset) -> bool:
    return isinstance(dataset, IterableDataset)


def is_hf_stream(dataset) -> bool:
    datasets = sys.modules.get("datasets")  # imported by whoever made one
    return datasets is not None and isinstance(dataset, datasets.IterableDataset)


def replayable(dataset) -> bool:
    """Whether reading the stream again for an epoch gives the same samples (see the docstring)."""
    return bool(getattr(getattr(dataset, "dataset", dataset), "replayable", True))


def stream_name(dataset) -> str:
    return type(getattr(dataset, "dataset", dataset)).__name__


class StreamShard(IterableDataset):
    """This process's share of `dataset` (see the module docstring), at most its first `limit`
    samples (of the whole stream), with the stream's random draws seeded per epoch."""

    def __init__(self, dataset, process: int, processes: int, seed: int, limit: Optional[int] = None):
        self.hf = is_hf_stream(dataset)
        if self.hf and limit is not None:
            dataset, limit = dataset.take(limit), None
        if self.hf and processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=process, world_size=processes)
        self.dataset, self.process, self.processes = dataset, process, processes
        self.seed, self.limit, self.epoch = int(seed), limit, 0
        self.replayable = replayable(dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        workers, index = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        own_seed = sample_seed(self.seed, self.epoch, self.process * 1009 + index)
        if worker is not None:  # a worker's generators are its own
            seed_all(own_seed)
            yield from self._share(iter(self.dataset), workers, index)
            return
        yield from _own_draws(self._share(iter(self.dataset), 1, 0), own_seed)

    def _share(self, samples, workers: int, index: int):
        if self.hf:  # split across processes already (and cut to its limit); it splits itself across workers
            yield from samples
            return
        parts, mine = self.processes * workers, self.process + self.processes * index
        yield from (s for g, s in enumerate(islice(samples, self.limit)) if g % parts == mine)


def _host_rng() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_host_rng(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def _own_draws(samples, seed: int):
    """The samples of `samples`, each made with host generators of the stream's own (seeded by
    `seed`), the process's put back around each (about 20 us a sample)."""
    outer = _host_rng()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU's alone: torch.manual_seed would reseed CUDA too
    own = _host_rng()
    _set_host_rng(outer)
    while True:
        outer = _host_rng()
        _set_host_rng(own)
        try:
            sample = next(samples)
        except StopIteration:
            _set_host_rng(outer)
            return
        own = _host_rng()
        _set_host_rng(outer)
        yield sample


def prepare_stream(dl: DataLoader, accelerator):
    """A loader over a stream prepared for this process: its share (`shard_loader`), placed on the
    device by Accelerate but not sharded again (Accelerate's sharding of a stream would have every
    process read the whole of it and pad the end with repeated samples)."""
    from accelerate.data_loader import prepare_data_loader

    acc = accelerator
    shard = shard_loader(dl, acc.process_index, acc.num_processes, acc.dataloader_config.data_seed or 0)
    return prepare_data_loader(shard, acc.device, num_processes=1, process_index=0, put_on_device=acc.device_placement,
                               rng_types=[], dispatch_batches=False, even_batches=False,
                               non_blocking=acc.dataloader_config.non_blocking)


def shard_loader(dl: DataLoader, process: int, processes: int, seed: int) -> DataLoader:
    """A loader like `dl` (batch size, collate, workers, pinning) over this process's share of its
    stream."""
    if dl.batch_size is None:
        raise DataError("a DataLoader over a stream needs a batch_size (batch_size=None, batches made by the data "
                        "set itself, cannot be split across processes)")
    dataset = dl.dataset if isinstance(dl.dataset, StreamShard) else StreamShard(dl.dataset, process, processes, seed)
    workers = dl.num_workers
    extra = dict(prefetch_factor=dl.prefetch_factor, persistent_workers=False) if workers else {}
    return DataLoader(dataset, batch_size=dl.batch_size, collate_fn=dl.collate_fn, num_workers=workers,
                      pin_memory=dl.pin_memory, drop_last=dl.drop_last, timeout=dl.timeout,
                      worker_init_fn=dl.worker_init_fn, multiprocessing_context=dl.multiprocessing_context, **extra)


class Head(IterableDataset):
    """The first `n` samples of a stream (data.train_size / data.val_size)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n
        self.replayable = replayable(dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        return islice(iter(self.dataset), self.n)


def head(dataset, n: int):
    """The first `n` samples of a stream (a Hugging Face one cut by its own `take`)."""
    return dataset.take(n) if is_hf_stream(dataset) else Head(dataset, n)


def first_samples(dataset, n: int = 2) -> list:
    """The first `n` samples of a stream (this process's share, for a `StreamShard`), read in this
    process, drawing nothing from its generators (for the checks before training)."""
    from train.data.rng import rng_untouched

    out = []
    with rng_untouched():
        for sample in iter(dataset):
            out.append(sample)
            if len(out) == n:
                break
    if not out:
        raise DataError(f"the stream {stream_name(dataset)} gave no samples")
    return out
