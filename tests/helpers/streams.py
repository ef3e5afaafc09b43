"""Streams for the tests: the counting sequences of `tests.helpers.lm` as a plain generator
`IterableDataset` and as a Hugging Face `datasets.IterableDataset`, each sample carrying its `id`;
a padding collate that writes down the ids it batches (to check that every sample is seen once)."""

import os

import torch

from tests.helpers.lm import Counting


VAL_IDS = 100_000  # validation samples' ids start here


class CountingStream(torch.utils.data.IterableDataset):
    """The samples of `Counting(n, seed)` in an order drawn from (seed, epoch): the same order each
    time it is read for an epoch. `fresh_order=True` draws the order anew on every read (a stream
    that cannot be read again alike); `replayable` says so when set."""

    def __init__(self, n: int, seed: int, fresh_order: bool = False, first_id: int = 0):
        self.data, self.seed, self.epoch, self.fresh_order = Counting(n, seed), seed, 0, fresh_order
        self.first_id = first_id

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        if self.fresh_order:
            g.seed()
        else:
            g.manual_seed(self.seed * 1000 + self.epoch)
        for i in torch.randperm(len(self.data), generator=g).tolist():
            yield {**self.data[i], "id": self.first_id + i}


def load(train_size: int = 512, val_size: int = 101, seed: int = 0, fresh_order: bool = False,
         replayable: bool = True):
    train = CountingStream(train_size, seed, fresh_order)
    if not replayable:
        train.replayable = False
    return {"train": train, "val": CountingStream(val_size, seed + 1, first_id=VAL_IDS)}


def load_hf(train_size: int = 512, val_size: int = 101, seed: int = 0, shards: int = 4):
    """The same samples as Hugging Face streams, shuffled by `datasets` (its buffer, seeded)."""
    import datasets

    def as_stream(data, seed, first_id=0):
        rows = {"input_ids": [t.tolist() for t in data.tokens], "labels": [t.tolist() for t in data.tokens],
                "id": list(range(first_id, first_id + len(data)))}
        stream = datasets.Dataset.from_dict(rows).to_iterable_dataset(num_shards=shards)
        return stream.shuffle(seed=seed, buffer_size=64)

    return {"train": as_stream(Counting(train_size, seed), seed),
            "val": as_stream(Counting(val_size, seed + 1), seed, VAL_IDS)}


class RecordingPad:
    """`train.batches.PadCollate` that appends the ids it batches to `folder/ids-<pid>.txt` and drops
    them from the batch (the model does not take them)."""

    def __init__(self, folder: str):
        from train.data.batches import PadCollate

        self.folder, self.pad = folder, PadCollate()

    def __call__(self, samples):
        ids = [int(s.pop("id")) for s in samples]
        with open(os.path.join(self.folder, f"ids-{os.getpid()}.txt"), "a") as f:
            f.write("".join(f"{i}\n" for i in ids))
        return self.pad(samples)
