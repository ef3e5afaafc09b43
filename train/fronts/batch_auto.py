"""The script's `batch_size: auto`: the search of `train.service.batch_find` run on the config's own
model, optimizer, loss and training data before the run is built, and its choice written into the
config (so `config.yaml` records it, and a resume uses it without searching again).

The search trains a throwaway copy: afterwards the model, the optimizer and every random generator
are built afresh from the seed, exactly as for a run given that size by hand.
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path
from typing import Optional

from train.base.errors import ConfigError


def saved_choice(cfg) -> Optional[tuple[int, int]]:
    """(batch_size, gradient_accumulation_steps) that a run in this output folder found before."""
    import yaml

    path = Path(cfg.output_dir) / "config.yaml"
    if str(cfg.resume).lower() in ("none", "null", "false", "no") or not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text()) or {}
    if isinstance(saved.get("batch_size"), int):
        return saved["batch_size"], saved.get("gradient_accumulation_steps", 1)
    return None


def resolve_batch_size(cfg, accelerator, options, num_classes: Optional[int]) -> str:
    """Replace `cfg.batch_size: auto` by the size found (and `gradient_accumulation_steps`, with
    `batch_find.global_batch`), on every process alike; returns the plan's line."""
    from train.service.batch_find import refuse_sharded

    refuse_sharded(options.strategy)
    world = accelerator.num_processes
    saved = saved_choice(cfg)
    if saved is not None:
        cfg.batch_size, cfg.gradient_accumulation_steps = saved
        line = (f"batch_size: auto: {saved[0]} per process x accumulation {saved[1]}, as found when this run began "
                f"({cfg.output_dir}/config.yaml)")
    else:
        found, line = _search(cfg, accelerator, world, num_classes)
        cfg.batch_size, cfg.gradient_accumulation_steps = found
    accelerator.gradient_accumulation_steps = options.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    return line


def _search(cfg, accelerator, world: int, num_classes: Optional[int]) -> tuple[tuple[int, int], str]:
    import dataclasses

    from accelerate.utils import set_seed

    from train.data.loaders import make_loaders
    from train.data.streams import is_stream
    from train.engine.devices import local_processes
    from train.engine.loop import Loop
    from train.fronts.building import build_loss, build_model, build_optimizer
    from train.fronts.models import MODELS
    from train.service.batch_find import find_micro_batch

    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.batch_size = 1
    set_seed(cfg.seed)
    loaders = make_loaders(probe_cfg, accelerator.device, local_processes(accelerator), seed=cfg.seed,
                           num_classes=num_classes, processes=world)
    data = loaders.train.dataset
    if is_stream(data):
        raise ConfigError("batch_size: auto needs a training set with a length (a stream has none); give batch_size")
    in_channels = data[0][0].shape[0] if cfg.model in MODELS else None
    model = build_model(cfg, in_channels)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), accelerator.device, False)
    # the run's averages (ema) take memory beside the model: the probe holds them too
    loop = Loop(model, optimizer, build_loss(cfg.loss, cfg.loss_args), {}, accelerator=accelerator,
                ema=dataclasses.asdict(cfg.ema))
    micro, accumulation, line = find_micro_batch(loop, data, loaders.train.collate_fn,
                                                 dataclasses.asdict(cfg.batch_find), cfg.gradient_accumulation_steps)
    del loop, model, optimizer, loaders, data
    accelerator.free_memory()  # the probe's model and optimizer out of the accelerator's lists
    gc.collect()
    return (micro, accumulation), line


def loader_at(dl, batch_size: int):
    """A user's DataLoader served again with `batch_size` samples a batch: the same data set, sampler
    (so the same order from the same generator), collate function, workers and memory pinning."""
    from torch.utils.data import DataLoader

    if dl.batch_size is None:
        raise ConfigError("batch_size='auto' needs a DataLoader made with a batch_size (not a batch_sampler)")
    extra = dict(prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers) if dl.num_workers else {}
    return DataLoader(dl.dataset, batch_size=batch_size, sampler=dl.sampler, collate_fn=dl.collate_fn,
                      num_workers=dl.num_workers, pin_memory=dl.pin_memory, drop_last=dl.drop_last,
                      worker_init_fn=dl.worker_init_fn, generator=dl.generator, **extra)
