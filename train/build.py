"""Config -> torch objects: the model, the loss, the metrics, the optimizer and the LR schedule,
each a built-in name or an import path (`train.registry`)."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from .errors import ConfigError
from .registry import build, resolve, short_name

LOSSES = {"cross_entropy": nn.CrossEntropyLoss, "nll": nn.NLLLoss, "mse": nn.MSELoss, "l1": nn.L1Loss,
          "smooth_l1": nn.SmoothL1Loss, "huber": nn.HuberLoss, "bce_with_logits": nn.BCEWithLogitsLoss,
          "bce": nn.BCELoss}
CLASSIFICATION_LOSSES = ("cross_entropy", "nll")  # whose targets are class indices
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}
WITH_MOMENTUM = ("sgd", "rmsprop")


def build_model(cfg, in_channels: int) -> nn.Module:
    """The config's model: a built-in (sized by the data's channels and data.num_classes) or the
    user's class or factory called with model_args."""
    from .models import MODELS

    model = resolve(cfg.model, MODELS, "model")
    args = dict(cfg.model_args)
    if cfg.model in MODELS:
        args = {"in_channels": in_channels, "num_classes": cfg.data.num_classes, **args}
    net = build(model, args, "model", cfg.model)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model '{cfg.model}' gave a {type(net).__name__}, not a torch.nn.Module")
    return net


MODEL_LOSS = "model"  # the loss the model computes itself (a dict / ModelOutput holding `loss`)


def build_loss(name: str, args: dict):
    """A loss class is instantiated with `args`; a function is used as is (with `args` bound);
    `model` gives None: the loop trains on the model's own loss."""
    if name == MODEL_LOSS:
        if args:
            raise ConfigError("loss: model takes no loss_args (the model computes its loss); remove loss_args")
        return None
    loss = resolve(name, {**LOSSES, MODEL_LOSS: None}, "loss")
    if inspect.isclass(loss):
        return build(loss, args, "loss", name)
    if not callable(loss):
        raise ConfigError(f"loss '{name}' is a {type(loss).__name__}, not a callable loss(y_pred, y_true)")
    return functools.partial(loss, **args) if args else loss


def build_metrics(names) -> dict:
    """`{column name: metric}`: built-ins by name, else imported functions f(y_pred, y_true), or
    classes with update/compute/reset (instantiated without arguments)."""
    from .metrics import METRICS

    metrics = {}
    for name in names:
        metric = resolve(name, METRICS, "metric")
        if inspect.isclass(metric):
            metric = build(metric, {}, "metric", name)
        if not callable(metric) and not hasattr(metric, "compute"):
            raise ConfigError(f"metric '{name}' is a {type(metric).__name__}: give a function f(y_pred, y_true) "
                              f"or an object with update/compute/reset")
        metrics[name if name in METRICS else short_name(name)] = metric
    return metrics


def build_callbacks(specs) -> list:
    """The config's callbacks: each an import path (a class built without arguments, or an object)
    or `{name: path, args: {...}}`."""
    callbacks = []
    for spec in specs:
        if isinstance(spec, dict):
            unknown = set(spec) - {"name", "args"}
            if "name" not in spec or unknown:
                raise ConfigError(f"a callback is 'package.module:Class' or {{name: ..., args: {{...}}}}; got {spec!r}")
            name, args = spec["name"], dict(spec.get("args") or {})
        else:
            name, args = spec, {}
        made = resolve(name, {}, "callback")
        if inspect.isclass(made) or (callable(made) and args):
            made = build(made, args, "callback", name)
        callbacks.append(made)
    return callbacks


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """`cfg` is the `optimizer` section of the config."""
    cls = resolve(cfg.name, OPTIMIZERS, "optimizer")
    args = {"lr": cfg.lr, **({"weight_decay": cfg.weight_decay} if cfg.weight_decay or cfg.name in OPTIMIZERS else {}),
            **({"momentum": cfg.momentum} if cfg.name in WITH_MOMENTUM else {}), **cfg.args}
    optimizer = build(cls, args, "optimizer", cfg.name, params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer '{cfg.name}' gave a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    return optimizer


def build_scheduler(cfg, optimizer, epochs: int, steps_per_epoch: int):
    """`cfg` is the `scheduler` section; `steps_per_epoch` counts optimizer steps per process.
    Returns None for `name: none`."""
    intervals = max(1, epochs if cfg.interval == "epoch" else epochs * steps_per_epoch)
    builtins = {
        "none": lambda opt: None,
        "step": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma, **cfg.args),
        "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=intervals, **cfg.args),
        "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=intervals, **cfg.args)}
    if cfg.name == "onecycle" and cfg.interval != "step":
        raise ConfigError("scheduler.name=onecycle is stepped per optimizer step; set scheduler.interval=step")
    if cfg.name in builtins:
        return builtins[cfg.name](optimizer)
    return build(resolve(cfg.name, builtins, "scheduler"), cfg.args, "scheduler", cfg.name, optimizer)
