"""Data loaders: the in-memory fast path, per-sample loading through workers, and the rule that
chooses between them and sets `num_workers` and `pin_memory`.

Data held in memory (`ArrayData`, `TensorData` from `train.data.sources`) is cut into batches by one
indexing op per tensor (`__getitems__`), images normalised in the same op, with no per-sample
Python and no worker processes; on a GPU the whole set lives on the GPU when it fits
`data.in_memory_limit_mb`. Any other data set is loaded sample by sample in worker processes.
Every choice is explained in `Loaders.notes`, which the plan prints. This module knows nothing of
models or the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from train.data.sample_draws import SeededSamples
from train.base.errors import ConfigError, DataError
from train.data.nested import apply
from train.data.sources import ArrayData, StreamedImages, TensorData, load_splits
from train.data.streams import is_stream, replayable, stream_name


def check_labels(labels: torch.Tensor, num_classes: int, split: str) -> None:
    if labels.is_floating_point():
        raise DataError(f"{split} targets are floating point but the loss expects class indices; use a regression "
                        f"loss (loss=mse) or integer labels")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{split} labels range over {lo}..{hi} but data.num_classes={num_classes}; "
                        f"set data.num_classes={hi + 1} or fix the labels")


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


def batch_as_is(batch):
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


class InMemoryTensors(Dataset):
    """Features (a tensor, a tuple or a dict of tensors) and targets held as tensors (on the
    device when they fit); a batch is one indexing op per tensor."""

    def __init__(self, data: TensorData, device: torch.device | str = "cpu"):
        self.features = apply(lambda t: t.to(device), data.features)
        self.targets = data.targets.to(device)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, device=self.targets.device)
        return apply(lambda t: t[idx], self.features), self.targets[idx]

    def __getitem__(self, i: int):
        return apply(lambda t: t[i], self.features), self.targets[i]


def served_from_memory(dl, device: torch.device, limit_mb: int = 2048):
    """A user's plain `DataLoader` over a `TensorDataset` of (inputs, targets), default collate,
    shuffled or in order, served as the config's in-memory path serves its data: the tensors on the
    device (when they fit in `limit_mb`), each batch one indexing op instead of a collate of
    `batch_size` samples (the per-sample collate was most of a small model's step). The batches are
    the same, in the same order (the same sampler and generator; Accelerate's seedable sampler
    replaces either alike). Returns (the loader, a note for the plan), or (`dl`, None) for any
    other loader, which is used as given."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, TensorDataset, default_collate

    if type(dl) is not DataLoader or type(dl.dataset) is not TensorDataset or len(dl.dataset.tensors) != 2:
        return dl, None
    sampler = dl.sampler
    plain_sampler = type(sampler) is SequentialSampler or (
        type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None)
    if dl.collate_fn is not default_collate or type(dl.batch_sampler) is not BatchSampler or not plain_sampler:
        return dl, None
    data = TensorData(*dl.dataset.tensors)
    size = data.nbytes()
    if data.features.device.type == device.type:
        place = data.features.device  # already there: left where the user put it
    elif device.type == "cuda" and size <= min(limit_mb * 2**20, torch.cuda.mem_get_info(device)[0] // 4):
        place = device  # a quarter of the free memory at most: the model and its activations need the rest
    else:
        place = torch.device("cpu")
    # the same sampler object and loader generator: the same order and the same draws from the global RNG
    served = DataLoader(InMemoryTensors(data, place), batch_size=dl.batch_size,
                        sampler=sampler, generator=dl.generator, drop_last=dl.drop_last, collate_fn=batch_as_is)
    return served, (f"in-memory fast path: your DataLoader's TensorDataset, {len(data)} samples ({_mb(size)}), as "
                    f"tensors on {place.type}, batches cut by indexing")


def cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpus_per_process(local_processes: int) -> int:
    """This node's CPUs shared among its processes."""
    return cpus_available() // max(1, local_processes)


def choose_num_workers(requested: Optional[int], in_memory: bool, local_processes: int) -> tuple[int, str]:
    """The rule: 0 for in-memory data (a batch is one indexing op; workers would only add IPC);
    otherwise the CPUs left to each process on this node after its own main thread, capped at 8."""
    if requested is not None:
        return requested, f"num_workers={requested}: set in the config"
    if in_memory:
        return 0, "num_workers=0: data held in memory, batches cut by indexing"
    per_process = cpus_per_process(local_processes)
    workers = max(0, min(8, per_process - 1))
    return workers, f"num_workers={workers}: {per_process} CPU(s) per process, one kept for the main thread"


def spare_cpus(loader, local_processes: int) -> int:
    """The CPUs of this node a process could still give to `loader`'s workers: its share of the
    node's CPUs, less its own main thread and the workers it already has."""
    return max(0, cpus_per_process(local_processes) - 1 - (getattr(loader, "num_workers", 0) or 0))


@dataclass
class Loaders:
    train: DataLoader
    val: Optional[DataLoader]
    notes: list[str] = field(default_factory=list)  # why each setting was chosen, for the plan
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def make_collate(dcfg, from_factory=None):
    """The collate `data.collate` names: None (torch's stacking one; a factory's own collate when it
    gave one), `pad` (`train.data.batches.PadCollate`), or an import path (a class is built with
    `data.collate_args`, a function gets them bound)."""
    import functools
    import inspect

    from train.data.batches import PadCollate
    from train.config.names import instantiate, resolve

    if dcfg.collate is None:
        return from_factory
    if dcfg.collate == "pad":
        return PadCollate(dcfg.pad_value)
    made = resolve(dcfg.collate, {"pad": None}, "collate")
    if inspect.isclass(made):
        made = instantiate(made, dcfg.collate_args, "collate", dcfg.collate)
    elif dcfg.collate_args:
        made = functools.partial(made, **dcfg.collate_args)
    if not callable(made):
        raise ConfigError(f"data.collate '{dcfg.collate}' is a {type(made).__name__}, not a function f(samples) -> batch")
    return made


def sample_lengths(dataset, at_most: Optional[int] = None) -> list[int]:
    """Each sample's length (its longest first dimension): the data set's own `lengths` when it has
    them, else read sample by sample once (only `at_most` of them, spread over the set, for an
    estimate)."""
    from train.data.batches import sample_length

    lengths = getattr(dataset, "lengths", None)
    if lengths is not None and len(lengths) == len(dataset):
        return [int(n) for n in lengths]
    n = len(dataset)
    picks = range(n) if at_most is None or n <= at_most else (i * n // at_most for i in range(at_most))
    return [sample_length(dataset[i]) for i in picks]


def make_loaders(cfg, device: torch.device | str = "cpu", local_processes: int = 1, seed: int = 0,
                 num_classes: Optional[int] = None, processes: int = 1) -> Loaders:
    """Train and validation loaders for the run config `cfg` (its `data` section and
    `batch_size`, per process). Shuffling of the training set is seeded by `seed`. With
    `num_classes`, labels are checked to lie in 0..num_classes-1 (classification). `processes`
    (all of them) sizes the length-grouped mega-batches."""
    device = torch.device(device)
    dcfg = cfg.data
    train, val, factory_collate = load_splits(dcfg)
    if not is_stream(train) and len(train) == 0:
        raise DataError("the training set is empty; check data.path, data.train_size or the data factory")
    limit = dcfg.in_memory_limit_mb * 2**20
    in_memory = isinstance(train, (ArrayData, TensorData))
    size = sum(d.nbytes() for d in (train, val) if isinstance(d, (ArrayData, TensorData)))
    place = device if in_memory and device.type == "cuda" and size <= limit else torch.device("cpu")
    notes, mean, std = [], None, None
    held = {name: _held_labels(data) for name, data in (("training", train), ("validation", val))}
    if num_classes is not None:
        for name, labels in held.items():
            if labels is not None:
                check_labels(labels, num_classes, name)
    if is_stream(train):
        if dcfg.group_by_length:
            raise ConfigError("data.group_by_length needs every sample's length, and a stream has no length; set it "
                              "to false (or give a map-style Dataset)")
        notes.append(f"stream {stream_name(train)}: length unknown: an epoch ends when the stream does"
                     + (f" or after steps_per_epoch={cfg.steps_per_epoch}" if cfg.steps_per_epoch else "")
                     + "; each process reads its own share")
        if not replayable(train):
            notes.append(f"stream {stream_name(train)} cannot be read again alike (replayable = False): "
                         f"checkpoints at epoch ends only; a stop mid-epoch resumes from the last epoch end")
    elif isinstance(train, ArrayData):
        mean, std = channel_stats(train.images)
        notes.append(f"in-memory fast path: {len(train)} training samples as uint8 on {place.type}, "
                     f"normalised per batch (mean={[round(m, 4) for m in mean]}, std={[round(s, 4) for s in std]})")
    elif isinstance(train, TensorData):
        notes.append(f"in-memory fast path: {len(train)} training samples ({_mb(size)}) as tensors on {place.type}")
    elif isinstance(train, StreamedImages):
        notes.append(f"streaming: {len(train)} training images, {_mb(train.decoded_bytes)} decoded ({train.why}): "
                     f"decoded per sample by loader workers, normalised with statistics of "
                     f"{min(len(train), StreamedImages.SAMPLES_FOR_STATS)} samples")
    else:
        notes.append(f"per-sample loading: {len(train)} training samples from {type(train).__name__}")

    def dataset(data):
        if isinstance(data, ArrayData):  # the training set's statistics normalise both splits
            return InMemoryDataset(data, mean, std, place)
        if isinstance(data, TensorData):
            return InMemoryTensors(data, place)
        return SeededSamples(data, seed)  # per-sample random draws that a resume repeats exactly

    def dataset(data, memory=dataset):
        return data if is_stream(data) else memory(data)

    train_ds, val_ds = dataset(train), dataset(val) if val is not None else None
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
    # workers started afresh each epoch see the epoch that seeds each sample's draws (train.draws)
    common = dict(batch_size=cfg.batch_size, num_workers=workers, pin_memory=pin, persistent_workers=False)
    if workers > 0 and dcfg.prefetch_factor is not None:
        common["prefetch_factor"] = dcfg.prefetch_factor
    generator = torch.Generator().manual_seed(seed)
    collate = make_collate(dcfg, factory_collate)
    if in_memory and (collate is not None or dcfg.group_by_length):
        raise ConfigError("a collate (data.collate, or the factory's) and data.group_by_length are for per-sample "
                          "data; a TensorDataset holds samples of one shape (the fast path): remove them, or "
                          "return another Dataset")
    train_common = dict(common, collate_fn=batch_as_is) if in_memory else dict(common, collate_fn=collate)
    order = dict(shuffle=True, generator=generator) if not is_stream(train_ds) else {}
    if (dcfg.collate == "pad" or dcfg.group_by_length) and not is_stream(train_ds):  # lengths read once (no images decoded for other collates)
        from train.data.grouping import LengthGroupedSampler, padding_efficiency

        # every length for grouping; for the plan's figure alone, an estimate from 2,048 samples
        lengths = sample_lengths(train_ds, None if dcfg.group_by_length else 2048)
        grouped = LengthGroupedSampler(lengths, cfg.batch_size * processes, seed)
        shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
        plain = padding_efficiency(lengths, shuffled, cfg.batch_size)
        if dcfg.group_by_length:
            order = dict(sampler=grouped)
            notes.append(f"length-grouped batches: padding efficiency {padding_efficiency(lengths, grouped.order(0), cfg.batch_size):.3f} "
                         f"(real / padded tokens, epoch 1; {plain:.3f} shuffled), lengths {min(lengths)}-{max(lengths)}")
        elif min(lengths) != max(lengths):
            notes.append(f"padding efficiency {plain:.3f} (real / padded tokens, epoch 1), lengths "
                         f"{min(lengths)}-{max(lengths)}; data.group_by_length=true would pad less")
    dl_train = DataLoader(train_ds, **order, **train_common)
    val_common = dict(common, collate_fn=batch_as_is) if isinstance(val, (ArrayData, TensorData)) \
        else dict(common, collate_fn=collate)
    dl_val = DataLoader(val_ds, shuffle=False, **val_common) if val_ds is not None else None
    return Loaders(dl_train, dl_val, notes, mean, std)


def _held_labels(data) -> Optional[torch.Tensor]:
    """A split's labels where they are held as one tensor (in memory, or a streamed image set's)."""
    if isinstance(data, (ArrayData, StreamedImages)):
        return data.labels
    if isinstance(data, TensorData):
        return data.targets
    return None
