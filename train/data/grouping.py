"""Length-grouped batches for variable-length data (`data.group_by_length`), as `transformers`'
Trainer makes them: shuffle, cut into mega-batches, sort each by length, so that a batch holds
samples of similar lengths and little padding. The order is a function of `(seed, epoch)` alone,
so every process draws the same order (Accelerate hands each its share of the batches) and a run
resumed mid-epoch skips exactly the batches it had done."""

from __future__ import annotations

from typing import Sequence

import torch

MEGA_BATCHES = 50  # batches per sorted group: transformers' default (mega_batch_mult)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Indices in length-grouped order for the epoch set by `set_epoch` (Accelerate calls it).
    `batch_size` is that of one optimizer-step's worth of batches over all processes."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size, self.seed, self.epoch = batch_size, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        shuffled = torch.randperm(len(self.lengths), generator=generator)
        groups = shuffled.split(self.batch_size * MEGA_BATCHES)
        # longest first within each group; stable, so equal lengths keep their shuffled order
        return torch.cat([g[torch.argsort(self.lengths[g], descending=True, stable=True)] for g in groups]).tolist()

    def __iter__(self):
        return iter(self.order(self.epoch))


def padding_efficiency(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Real tokens / padded tokens when `order` is cut into batches of `batch_size` and each batch
    is padded to its longest sample."""
    lengths = torch.as_tensor(list(lengths), dtype=torch.long)[torch.as_tensor(list(order), dtype=torch.long)]
    real = padded = 0
    for batch in lengths.split(batch_size):
        real += int(batch.sum())
        padded += int(batch.max()) * len(batch)
    return real / padded if padded else 1.0
