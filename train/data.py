"""Data: sources (MNIST IDX files, torchvision classes, Hugging Face `datasets`), the in-memory
fast path, and the one factory for train/validation loaders with its `num_workers` rule.

Every source that can be held as a uint8 array is decoded once into `ArrayData`; batches are then
cut by indexing a tensor (`InMemoryDataset.__getitems__`), normalised in the same tensor op, with
no per-sample Python and no worker processes. Only data too large for memory streams through a
classic per-sample `Dataset` with workers. This module knows nothing of models or the loop.
"""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ---------------------------------------------------------------------------------------- IDX
def read_idx(path: str | Path, expect_ndim: Optional[int] = None) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed), checking its magic number and size.

    Written by hand: the format is 20 lines, and torchvision's reader needs its own folder layout.
    """
    path = Path(path)
    if not path.is_file():
        shipped = Path(__file__).resolve().parent.parent / "data" / "mnist"
        restore = "restore it with `git checkout -- data/mnist`" if path.parent.resolve() == shipped else "put it there"
        raise DataError(f"data file '{path}' not found; {restore}, or point data.path at the folder that holds it")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip is an EOFError
        raise DataError(f"data file '{path}' is corrupt ({e}); replace it with a good copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"data file '{path}' is not an IDX file (bad magic number "
                        f"{raw[:4].hex() or 'empty'}); replace it with a good copy")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"data file '{path}' holds {ndim}-d records, expected {expect_ndim}-d; "
                        f"images and labels may be swapped")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"data file '{path}' is truncated or padded: {len(raw)} bytes, expected "
                        f"{expected} for shape {shape}; replace it with a good copy")
    # copied out of the read-only bytes: torch refuses to wrap non-writable arrays quietly
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()


# ---------------------------------------------------------------------------------- sources
@dataclass
class ArrayData:
    """A data set held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: Optional[int]) -> "ArrayData":
        return self if n is None else ArrayData(self.images[:n], self.labels[:n])


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:  # (N, H, W): one channel
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return torch.from_numpy(np.ascontiguousarray(images))


def load_mnist(folder: str | Path, split: str) -> ArrayData:
    images_file, labels_file = MNIST_FILES["train" if split == "train" else "test"]
    images = read_idx(Path(folder) / images_file, expect_ndim=3)
    labels = read_idx(Path(folder) / labels_file, expect_ndim=1)
    if len(images) != len(labels):
        raise DataError(f"MNIST {split}: {len(images)} images but {len(labels)} labels in '{folder}'")
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


def load_hf(cfg, split: str) -> ArrayData:
    """A Hugging Face `datasets` source: a builder on local files (`parquet`, `csv`, `imagefolder`
    with data.path as data_dir) or a hub name (only with data.download=true)."""
    if not cfg.download:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is imported
    import datasets

    name = cfg.name or "parquet"
    data_dir = cfg.path if cfg.path and Path(cfg.path).exists() else None
    split_name = cfg.train_split if split == "train" else cfg.val_split
    try:
        ds = datasets.load_dataset(name, data_dir=data_dir, split=split_name)
    except Exception as e:  # datasets raises many types for "not there"; all are the user's to fix
        raise DataError(f"cannot load Hugging Face data set '{name}' split '{split_name}' "
                        f"(data.path='{cfg.path}'): {str(e).splitlines()[0]}") from None
    for col in (cfg.image_column, cfg.label_column):
        if col not in ds.column_names:
            raise DataError(f"Hugging Face data set has no column '{col}' (columns: "
                            f"{', '.join(ds.column_names)}); set data.image_column/data.label_column")
    images = np.stack([np.asarray(im) for im in ds[cfg.image_column]])
    labels = torch.as_tensor(np.asarray(ds[cfg.label_column]), dtype=torch.int64)
    return ArrayData(_as_nchw(images), labels)


def load_split(cfg, split: str):
    """The train or validation split of the configured source: `ArrayData` or a `Dataset`."""
    loaders = {"mnist": lambda: load_mnist(cfg.path, split), "torchvision": lambda: load_torchvision(cfg, split),
               "hf": lambda: load_hf(cfg, split)}
    data = loaders[cfg.source]()
    size = cfg.train_size if split == "train" else cfg.val_size
    if isinstance(data, ArrayData):
        data = data.head(size)
        check_labels(data.labels, cfg.num_classes, split)
    elif size is not None:
        data = torch.utils.data.Subset(data, range(min(size, len(data))))
    return data


def check_labels(labels: torch.Tensor, num_classes: int, split: str) -> None:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{split} labels range over {lo}..{hi} but data.num_classes={num_classes}; "
                        f"set data.num_classes={hi + 1} or fix the labels")


# ------------------------------------------------------------------------- in-memory fast path
def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of uint8 images (scaled to [0, 1]) from a 256-bin histogram:
    no float copy of the whole data set is made."""
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64) / 255
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean) ** 2).sum() / counts.sum()
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return means, stds


def _batch_as_is(batch):
    """collate_fn of the fast path: `__getitems__` already returns a whole batch."""
    return batch


class InMemoryDataset(Dataset):
    """uint8 images and labels in one tensor each (on the device when it fits); a batch is one
    indexing op plus the normalisation, done where the tensor lives."""

    def __init__(self, data: ArrayData, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu"):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        shape = (1, -1, 1, 1)
        # x_norm = (x/255 - mean) / std = x * scale + shift, one fused multiply-add per pixel
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(shape).to(device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(shape).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, device=self.images.device)
        x = torch.addcmul(self.shift, self.images[idx].float(), self.scale)
        return x, self.labels[idx]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


# -------------------------------------------------------------------------------- loaders
def cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def choose_num_workers(requested: Optional[int], in_memory: bool, local_processes: int) -> tuple[int, str]:
    """The rule: 0 for in-memory data (a batch is one indexing op; workers would only add IPC);
    otherwise the CPUs left to each process on this node after its own main thread, capped at 8."""
    if requested is not None:
        return requested, f"num_workers={requested}: set in the config"
    if in_memory:
        return 0, "num_workers=0: data held in memory, batches cut by indexing"
    per_process = cpus_available() // max(1, local_processes)
    workers = max(0, min(8, per_process - 1))
    return workers, f"num_workers={workers}: {per_process} CPU(s) per process, one kept for the main thread"


@dataclass
class Loaders:
    train: DataLoader
    val: Optional[DataLoader]
    notes: list[str] = field(default_factory=list)  # why each setting was chosen, for the plan
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


def make_loaders(cfg, device: torch.device | str = "cpu", local_processes: int = 1,
                 seed: int = 0) -> Loaders:
    """Train and validation loaders for the run config `cfg` (its `data` section and
    `batch_size`, per process). Shuffling of the training set is seeded by `seed`."""
    device = torch.device(device)
    dcfg = cfg.data
    train = load_split(dcfg, "train")
    val = load_split(dcfg, "val") if dcfg.val_size != 0 else None  # val_size=0: no validation
    notes = []
    in_memory = isinstance(train, ArrayData)
    mean = std = None
    place = torch.device("cpu")
    if in_memory:
        mean, std = channel_stats(train.images)
        size = train.images.numel() + (val.images.numel() if isinstance(val, ArrayData) else 0)
        if device.type == "cuda" and size <= dcfg.in_memory_limit_mb * 2**20:
            place = device  # the whole set lives on the GPU: no host-to-device copy per batch
        train = InMemoryDataset(train, mean, std, place)
        val = InMemoryDataset(val, mean, std, place) if isinstance(val, ArrayData) else val
        notes.append(f"in-memory fast path: {len(train)} training samples as uint8 on {place.type}, "
                     f"normalised per batch (mean={[round(m, 4) for m in mean]}, "
                     f"std={[round(s, 4) for s in std]})")
    workers, why = choose_num_workers(dcfg.num_workers, in_memory, local_processes)
    notes.append(why)
    pin = device.type == "cuda" and place.type == "cpu"
    if dcfg.pin_memory is not None:
        pin = dcfg.pin_memory
        notes.append(f"pin_memory={pin}: set in the config")
    elif pin:
        notes.append("pin_memory=True: batches leave host memory for a CUDA device (non-blocking copies)")
    else:
        notes.append("pin_memory=False: " + ("data already on the device" if device.type == "cuda" else "CPU run"))
    common = dict(batch_size=cfg.batch_size, num_workers=workers, pin_memory=pin,
                  persistent_workers=workers > 0)
    if workers > 0 and dcfg.prefetch_factor is not None:
        common["prefetch_factor"] = dcfg.prefetch_factor
    if in_memory:
        common["collate_fn"] = _batch_as_is
    generator = torch.Generator().manual_seed(seed)
    dl_train = DataLoader(train, shuffle=True, generator=generator, **common)
    dl_val = DataLoader(val, shuffle=False, **common) if val is not None else None
    return Loaders(dl_train, dl_val, notes, mean, std)



# ------------------------------------------------------------------------------------- tuning
class _OneSampleAtATime(Dataset):
    """The in-memory data served the generic way, one sample per `__getitem__` (what a plain
    map-style Dataset does), so that tuning can weigh workers against the fast path."""

    def __init__(self, data: InMemoryDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


def _time_loader(dl, batches: int, device: torch.device) -> tuple[float, float]:
    """(seconds to the first batch, samples/s over the next `batches` batches, copied to `device`)."""
    start = time.perf_counter()
    it = iter(dl)
    next(it)
    first = time.perf_counter() - start
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return first, n / (time.perf_counter() - start)


def tune(cfg, device: torch.device | str = "cpu", batches: int = 100, print_fn=print) -> list[dict]:
    """Time the training loader under each candidate setting on the real data (`num_workers` up to
    the CPUs there are, `pin_memory` on CUDA, `prefetch_factor` 2 and 4 with workers, and the
    in-memory fast path where the data allows it) and print them, best first. Returns the rows."""
    device = torch.device(device)
    train = load_split(cfg.data, "train")
    candidates = []
    if isinstance(train, ArrayData):
        mean, std = channel_stats(train.images)
        fast = InMemoryDataset(train, mean, std, "cpu")
        candidates.append(("in-memory fast path (num_workers=0)", dict(num_workers=0),
                           DataLoader(fast, batch_size=cfg.batch_size, shuffle=True, collate_fn=_batch_as_is)))
        train = _OneSampleAtATime(fast)
    workers = sorted({0, 1, 2, 4, 8} & set(range(cpus_available() + 1)))
    for w in workers:
        for pin in ([False, True] if device.type == "cuda" else [False]):
            for prefetch in ([2, 4] if w else [None]):
                settings = dict(num_workers=w, pin_memory=pin, **({"prefetch_factor": prefetch} if w else {}))
                label = ", ".join(f"{k}={v}" for k, v in settings.items())
                candidates.append((f"per sample: {label}", settings,
                                   DataLoader(train, batch_size=cfg.batch_size, shuffle=True, **settings)))
    rows = []
    for label, settings, dl in candidates:
        first, rate = _time_loader(dl, batches, device)
        rows.append(dict(setting=label, first_batch_s=first, samples_per_s=rate, **settings))
    rows.sort(key=lambda r: -r["samples_per_s"])
    print_fn(f"{'setting':<62} {'first batch s':>13} {'samples/s':>10}")
    for r in rows:
        print_fn(f"{r['setting']:<62} {r['first_batch_s']:>13.3f} {r['samples_per_s']:>10.0f}")
    best = rows[0]
    keys = " ".join(f"data.{k}={v}" for k in ("num_workers", "pin_memory", "prefetch_factor") if (v := best.get(k)) is not None)
    print_fn(f"best: {best['setting']} ({best['samples_per_s']:.0f} samples/s); config: {keys}")
    return rows


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m train.data tune",
                                     description="Time the training loader's settings on the real data; print the best.")
    parser.add_argument("command", choices=["tune"])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "mnist.yaml"))
    parser.add_argument("--batches", type=int, default=100, help="batches timed per setting (default 100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    from .config import load_config
    from .errors import UserError

    try:
        config = load_config(args.config, args.overrides)
        if not Path(config.data.path).is_absolute() and not Path(config.data.path).exists():
            config.data.path = str(Path(__file__).resolve().parent.parent / config.data.path)
        tune(config, args.device, args.batches)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
