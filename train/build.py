"""Config -> torch objects: the optimizer, the LR schedule and the loss, each by name."""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ConfigError


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """`cfg` is the `optimizer` section of the config."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer '{cfg.name}'; choose adam, adamw or sgd")


def build_scheduler(cfg, optimizer, epochs: int, steps_per_epoch: int):
    """`cfg` is the `scheduler` section; `steps_per_epoch` counts optimizer steps per process.
    Returns None for `name: none`."""
    intervals = epochs if cfg.interval == "epoch" else epochs * steps_per_epoch
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, intervals))
    if cfg.name == "onecycle":
        if cfg.interval != "step":
            raise ConfigError("scheduler.name=onecycle is stepped per optimizer step; set scheduler.interval=step")
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(1, intervals))
    raise ConfigError(f"unknown scheduler '{cfg.name}'; choose none, step, cosine or onecycle")


def build_loss(name: str):
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    if name == "nll":
        return nn.NLLLoss()
    raise ConfigError(f"unknown loss '{name}'; choose cross_entropy or nll")


def optimizer_steps_per_epoch(batches: int, num_processes: int, accumulation: int) -> int:
    """Optimizer steps each process takes per epoch once the batches are split over processes."""
    return math.ceil(math.ceil(batches / num_processes) / accumulation)
