"""Loader tuning: `python -m train.tune [--config FILE] [key=value ...]` times the training loader
under each setting on the real data (the in-memory fast path where the data allows it, and
per-sample loading with 0, 1, 2, 4, 8 workers, pinned memory on CUDA, prefetch 2 and 4) and prints
them best first with the config keys to set."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset

from train.supervision.reports import ended_by
from train.data.loaders import InMemoryDataset, batch_as_is, channel_stats, cpus_available
from train.data.sources import ArrayData, load_splits
from train.base.paths import DEFAULT_CONFIG


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
    train, _, _ = load_splits(cfg.data)
    candidates = []
    if isinstance(train, ArrayData):
        mean, std = channel_stats(train.images)
        fast = InMemoryDataset(train, mean, std, "cpu")
        candidates.append(("in-memory fast path (num_workers=0)", dict(num_workers=0),
                           DataLoader(fast, batch_size=cfg.batch_size, shuffle=True, collate_fn=batch_as_is)))
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


def main(argv=None) -> int:
    import argparse

    from train.config.loading import load_config
    from train.base.errors import UserError
    parser = argparse.ArgumentParser(prog="python -m train.tune",
                                     description="Time the training loader's settings on the real data; print the best.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--batches", type=int, default=100, help="batches timed per setting (default 100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        tune(config, args.device, args.batches)
    except UserError as e:
        return ended_by(e)
    return 0
