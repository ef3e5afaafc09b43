"""The script's `batch_size: auto`: the search of `train.service.batch_find` run on the config's own
model, optimizer, loss and training data before the run is built, and its choice written into the
config (so `config.yaml` records it, and a resume uses it without searching again).

The search trains a throwaway copy: afterwards the model, the optimizer and every random generator
are built afresh from the seed, exactly as for a run given that size by hand.
"""

from __future__ import annotations

import copy
import gc
import math
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
    import torch
    from accelerate.utils import set_seed

    from train.data.loaders import make_loaders
    from train.data.streams import is_stream
    from train.engine.devices import local_processes
    from train.engine.loop import Loop
    from train.fronts.building import build_loss, build_model, build_optimizer
    from train.fronts.models import MODELS
    from train.service.batch_find import cpu_memory_limit_mb, search, trial

    find = cfg.batch_find
    whole = find.global_batch
    if whole is not None and (whole <= 0 or whole % world):
        raise ConfigError(f"batch_find.global_batch must be a multiple of the {world} process(es); got {whole}")
    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.batch_size = 1
    set_seed(cfg.seed)
    loaders = make_loaders(probe_cfg, accelerator.device, local_processes(accelerator), seed=cfg.seed,
                           num_classes=num_classes, processes=world)
    data = loaders.train.dataset
    if is_stream(data):
        raise ConfigError("batch_size: auto needs a training set with a length (a stream has none); give batch_size")
    cap = find.max or math.ceil(len(data) / world)
    if whole is not None:
        cap = min(cap, whole // world)
    in_channels = data[0][0].shape[0] if cfg.model in MODELS else None
    model = build_model(cfg, in_channels)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), accelerator.device, False)
    loop = Loop(model, optimizer, build_loss(cfg.loss, cfg.loss_args), {}, accelerator=accelerator)
    inner = getattr(loop.optimizer, "optimizer", loop.optimizer)  # the torch optimizer: it steps whatever the sync
    collate = loaders.train.collate_fn

    def steps(size: int) -> None:
        batch = next(iter(torch.utils.data.DataLoader(data, batch_size=size, collate_fn=collate)))
        features, labels = loop.to_device(*loop.split(batch))
        for _ in range(find.steps):
            with accelerator.no_sync(loop.model):  # no collective a failed process would leave waiting
                _, loss = loop.forward(features, labels)
                loss.backward()
            inner.step()
            inner.zero_grad(set_to_none=True)

    limit = None if accelerator.device.type == "cuda" else \
        cpu_memory_limit_mb(find.memory_fraction, local_processes(accelerator))
    found = search(lambda size: trial(steps, size, accelerator.device, limit), accelerator, cap)
    del loop, model, optimizer, inner, loaders, data
    accelerator.free_memory()
    gc.collect()
    if found.size == 0:
        raise ConfigError("batch_size: auto: not even a batch of 1 sample trains within memory; use a smaller model, "
                          "mixed_precision, gradient_checkpointing or strategy=fsdp")
    found.limit = (f"at most {cap}" + (f" (batch_find.global_batch {whole} over {world} process(es))" if whole else "")
                   + (f"; on a CPU, a peak over {limit:,.0f} MB counts as out of memory" if limit else ""))
    micro, accumulation = found.size, cfg.gradient_accumulation_steps
    if whole is not None:  # the largest micro-batch that divides each process's share of the global batch
        share = whole // world
        micro = max(d for d in range(1, found.size + 1) if share % d == 0)
        accumulation = share // micro
    line = f"batch_size: auto: {found.words()}: {micro} per process x accumulation {accumulation}"
    if whole is not None:
        line += f" keeps the global batch of {whole}"
    return (micro, accumulation), line
