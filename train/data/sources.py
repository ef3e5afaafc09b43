"""Data sources: where the training and validation data come from, one split at a time.

A source gives each split as one of three things, and the loaders (`train.data.loaders`) treat each its way:
- `ArrayData`: uint8 images and integer labels held in memory (MNIST's IDX files, torchvision sets
  with `.data`, Hugging Face image columns that fit `data.in_memory_limit_mb`): the image fast path;
- `TensorData`: any tensors held in memory (a `TensorDataset` from your factory): the same fast
  path without the image normalisation;
- any other map-style `Dataset` (your own, a streamed Hugging Face set): loaded sample by sample
  in worker processes;
- an `IterableDataset` (a stream: a generator of your own, a Hugging Face `datasets.IterableDataset`):
  read in order, each process its share (`train.data.streams`).
This module knows nothing of models or the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from train.data.nested import apply, tensors
from train.base.errors import ConfigError, DataError, describe, first_line
from train.data.idx_files import MNIST_FILES, idx_count, read_idx

# ------------------------------------------------------------------------------ in memory
@dataclass
class ArrayData:
    """A data set held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: Optional[int]) -> "ArrayData":
        return self if n is None else ArrayData(self.images[:n], self.labels[:n])

    def nbytes(self) -> int:
        return self.images.numel() + self.labels.numel() * 8


@dataclass
class TensorData:
    """Tensors held in memory: features (a tensor, a tuple or a dict of tensors) and targets."""

    features: Any
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: Optional[int]) -> "TensorData":
        return self if n is None else TensorData(apply(lambda t: t[:n], self.features), self.targets[:n])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*tensors(self.features), self.targets])


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:  # (N, H, W): one channel
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return torch.from_numpy(np.ascontiguousarray(images))


# ---------------------------------------------------------------------------------- sources
def load_mnist(folder: str | Path, split: str, records: Optional[int] = None) -> ArrayData:
    """MNIST's `train` or `test` split from its IDX files (the first `records` only, if given)."""
    images_file, labels_file = MNIST_FILES["train" if split == "train" else "test"]
    images = read_idx(Path(folder) / images_file, expect_ndim=3, records=records)
    labels = read_idx(Path(folder) / labels_file, expect_ndim=1, records=records)
    declared = idx_count(Path(folder) / images_file), idx_count(Path(folder) / labels_file)
    if len(images) != len(labels) or declared[0] != declared[1]:
        raise DataError(f"MNIST {split}: {declared[0]} images but {declared[1]} labels in '{folder}'; "
                        f"replace the files with good copies")
    return ArrayData(_as_nchw(images), torch.from_numpy(labels.astype(np.int64)))


def load_torchvision(cfg, split: str):
    """Any `torchvision.datasets` class by name; held in memory when it exposes `.data`."""
    import torchvision

    cls = getattr(torchvision.datasets, cfg.name or "", None)
    if cls is None:
        raise DataError(f"torchvision has no data set '{cfg.name}'; set data.name to a class of "
                        f"torchvision.datasets, e.g. MNIST or FashionMNIST")
    try:
        ds = cls(root=cfg.path, train=(split == cfg.train_split), download=cfg.download)
    except RuntimeError as e:
        raise DataError(f"torchvision {cfg.name} not found under '{cfg.path}' ({e}); "
                        f"set data.download=true when online") from None
    if hasattr(ds, "data") and hasattr(ds, "targets"):
        data = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
        return ArrayData(_as_nchw(data), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64))
    from torchvision.transforms import ToTensor

    ds.transform = ToTensor()
    return ds


def load_hf(cfg, split: str):
    """A Hugging Face `datasets` source: a builder on local files (`parquet`, `csv`, `imagefolder`
    with data.path as data_dir) or a hub name (only with data.download=true). Held in memory as
    `ArrayData` when its decoded images fit `data.in_memory_limit_mb` (or data.streaming=false);
    otherwise streamed: `StreamedImages` decodes each sample when a loader worker asks for it."""
    if not cfg.download:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is imported
    import datasets

    datasets.disable_progress_bars()  # its bars would land in logs; the plan says what was loaded

    name = cfg.name or "parquet"
    data_dir = cfg.path if cfg.path and Path(cfg.path).exists() else None
    split_name = cfg.train_split if split == "train" else cfg.val_split
    try:
        ds = datasets.load_dataset(name, data_dir=data_dir, split=split_name)
    except Exception as e:  # datasets raises many types for "not there"; all are the user's to fix
        raise DataError(f"cannot load Hugging Face data set '{name}' split '{split_name}' "
                        f"(data.path='{cfg.path}'): {first_line(e)}") from None
    for col in (cfg.image_column, cfg.label_column):
        if col not in ds.column_names:
            raise DataError(f"Hugging Face data set has no column '{col}' (columns: "
                            f"{', '.join(ds.column_names)}); set data.image_column/data.label_column")
    size = cfg.train_size if split == "train" else cfg.val_size
    if size is not None:
        ds = ds.select(range(min(size, len(ds))))
    decoded = len(ds) * np.asarray(ds[0][cfg.image_column]).nbytes  # one image decoded, the rest alike
    limit = cfg.in_memory_limit_mb * 2**20
    stream = cfg.streaming if cfg.streaming is not None else decoded > limit
    if stream:
        why = "data.streaming=true" if cfg.streaming else f"over data.in_memory_limit_mb={cfg.in_memory_limit_mb}"
        return StreamedImages(ds, cfg.image_column, cfg.label_column, decoded, why)
    try:
        images = np.stack([np.asarray(im) for im in ds[cfg.image_column]])
    except ValueError as e:  # images of different sizes cannot be one array
        raise DataError(f"the images of Hugging Face data set '{name}' cannot be held as one array ({e}); "
                        f"resize them to one size, or set data.streaming=true") from None
    labels = torch.as_tensor(np.asarray(ds[cfg.label_column]), dtype=torch.int64)
    return ArrayData(_as_nchw(images), labels)


class StreamedImages(torch.utils.data.Dataset):
    """A Hugging Face image set too large to hold decoded: the Arrow table stays memory-mapped on
    disk and each sample is decoded (by `datasets`' own transform) when a loader worker asks for
    it. Normalised with per-channel statistics of up to 256 samples spread over the set."""

    SAMPLES_FOR_STATS = 256

    def __init__(self, ds, image_column: str, label_column: str, decoded_bytes: int, why: str):
        self.image_column, self.label_column = image_column, label_column
        self.decoded_bytes, self.why = decoded_bytes, why
        self.labels = torch.as_tensor(np.asarray(ds[label_column]), dtype=torch.int64)  # no image decoded
        picks = np.linspace(0, len(ds) - 1, num=min(self.SAMPLES_FOR_STATS, len(ds))).astype(int).tolist()
        sums, squares, count = 0.0, 0.0, 0
        for i in picks:  # one image at a time: never more than one decoded image in memory
            image = _as_nchw(np.asarray(ds[i][image_column])[None])[0].double() / 255
            sums, squares = sums + image.sum(dim=(1, 2)), squares + image.pow(2).sum(dim=(1, 2))
            count += image[0].numel()
        mean = sums / count
        self.mean = mean.tolist()
        self.std = (squares / count - mean ** 2).clamp(min=1e-12).sqrt().tolist()
        self.ds = ds.with_transform(self._decode)

    def _decode(self, batch: dict) -> dict:
        images = [_as_nchw(np.asarray(im)[None])[0] for im in batch[self.image_column]]
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return {"x": [(im.float() / 255 - mean) / std for im in images], "y": batch[self.label_column]}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        row = self.ds[int(i)]
        return row["x"], torch.as_tensor(row["y"], dtype=torch.int64)


def load_python(cfg):
    """`data.factory(**data.args)` from the user's code: the training and validation data sets, as
    `(train, val)`, `{"train": ..., "val": ..., "collate": fn}` or a lone training set. A
    `TensorDataset` is held in memory (the fast path); any other map-style `Dataset` is loaded
    sample by sample. Returns (train, val, the factory's collate or None)."""
    from train.config.names import instantiate, resolve

    factory = resolve(cfg.factory, {}, "data factory")
    try:
        made = instantiate(factory, cfg.args, "data factory", cfg.factory)
    except ConfigError:
        raise
    except Exception as e:  # a missing file, a bad argument value: the factory says what (--debug: its traceback)
        raise DataError(f"data factory '{cfg.factory}' raised {describe(e)}") from e
    collate = None
    if isinstance(made, dict):
        collate = made.get("collate")
        if collate is not None and not callable(collate):
            raise DataError(f"data factory '{cfg.factory}' returned a 'collate' that is a {type(collate).__name__}, "
                            f"not a function f(samples) -> batch")
        made = (made.get("train"), made.get("val", made.get("validation")))
    elif isinstance(made, torch.utils.data.Dataset):
        made = (made, None)
    if not isinstance(made, (tuple, list)) or len(made) != 2 or made[0] is None:
        raise DataError(f"data factory '{cfg.factory}' returned {_kind(made)}; return the training and "
                        f"validation data sets: (train, val), {{'train': ..., 'val': ...}} or the training set")
    for name, ds in zip(("training", "validation"), made):
        if ds is None or isinstance(ds, torch.utils.data.IterableDataset):
            continue  # a stream (train.streams)
        if not (isinstance(ds, torch.utils.data.Dataset) and hasattr(ds, "__len__")):
            raise DataError(f"data factory '{cfg.factory}' returned {_kind(ds)} as the {name} set; return torch "
                            f"Datasets: map-style (with __len__ and __getitem__) or an IterableDataset (a stream)")
    return (*(_in_memory(ds) for ds in made), collate)


def _kind(value) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def _in_memory(ds):
    if isinstance(ds, torch.utils.data.TensorDataset):
        *features, targets = ds.tensors
        return TensorData(features[0] if len(features) == 1 else tuple(features), targets)
    return ds


def load_splits(cfg):
    """(train, val, collate) of the configured source (`cfg` is the `data` section); val is None
    with data.val_size=0 or when a factory gives none; collate is a factory's, else None."""
    want_val, collate = cfg.val_size != 0, None
    if cfg.source == "python":
        train, val, collate = load_python(cfg)
        val = val if want_val else None
    else:
        sizes = {"train": cfg.train_size, "val": cfg.val_size}
        load = {"mnist": lambda split: load_mnist(cfg.path, split, sizes[split]), "torchvision": lambda split: load_torchvision(cfg, split),
                "hf": lambda split: load_hf(cfg, split)}.get(cfg.source)
        if load is None:
            raise ConfigError(f"data.source must be one of mnist, torchvision, hf, python; got {cfg.source!r}")
        train, val = load("train"), load("val") if want_val else None
    return _head(train, cfg.train_size), _head(val, cfg.val_size), collate


def _head(data, n):
    if data is None or n is None:
        return data
    if isinstance(data, (ArrayData, TensorData)):
        return data.head(n)
    if isinstance(data, torch.utils.data.IterableDataset):
        from train.data.streams import head

        return head(data, n)
    return data if len(data) <= n else torch.utils.data.Subset(data, range(n))
