"""Random draws a data set makes per sample (augmentation in `__getitem__`), made a function of the
seed, the epoch and the sample's index, so that a run resumed mid-epoch draws exactly what the
uninterrupted run drew.

Without this, a loader worker's random streams start afresh at each epoch (torch seeds each worker
from one base seed) and advance with every sample the worker loads; a resumed run skips the done
batches without loading them, so every later sample gets other draws. Here each sample's draws are
seeded from `(seed, epoch, index)` right before `__getitem__`: they no longer depend on how many
samples a worker loaded before, nor on how many workers or processes there are. In the main
process (no workers) the global generators are put back afterwards, so that training's own draws
(dropout) go on as if the sample had not been loaded.

The epoch reaches the data set through `set_epoch` (Accelerate's loader calls it); workers see it
because the loader starts them afresh each epoch (`persistent_workers` is off for such data).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from train.data.rng import rng_untouched


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from the three numbers (splitmix64-style mixing: nearby inputs, unrelated seeds)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) >> 1


def seed_all(value: int) -> None:
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class SeededSamples(Dataset):
    """`dataset` with each sample's random draws seeded from `(seed, epoch, index)`."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        value = sample_seed(self.seed, self.epoch, int(index))
        if torch.utils.data.get_worker_info() is not None:  # a worker's generators are its own
            seed_all(value)
            return self.dataset[index]
        with rng_untouched():
            seed_all(value)
            return self.dataset[index]

    def __getitems__(self, indices):
        # the loader calls a data set's __getitems__ instead of __getitem__ when it has one (a
        # Subset does): each sample must still get its own draws
        return [self[i] for i in indices]

    def __getattr__(self, name):  # the data set's own attributes (lengths, classes, ...)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
