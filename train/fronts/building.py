"""Config -> torch objects: the model, the loss, the metrics, the optimizer and the LR schedule,
each a built-in name or an import path (`train.config.names`)."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from train.base.errors import ConfigError
from train.config.names import instantiate, resolve, short_name
from train.engine.targets import TokenCrossEntropy

LOSSES = {"cross_entropy": nn.CrossEntropyLoss, "nll": nn.NLLLoss, "mse": nn.MSELoss, "l1": nn.L1Loss,
          "smooth_l1": nn.SmoothL1Loss, "huber": nn.HuberLoss, "bce_with_logits": nn.BCEWithLogitsLoss,
          "bce": nn.BCELoss, "token_cross_entropy": TokenCrossEntropy}
CLASSIFICATION_LOSSES = ("cross_entropy", "nll")  # whose targets are class indices
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}
WITH_MOMENTUM = ("sgd", "rmsprop")


def build_model(cfg, in_channels: int) -> nn.Module:
    """The config's model: a built-in (sized by the data's channels and data.num_classes), the
    user's class or factory called with model_args, or with `pretrained` the class's
    `from_pretrained(folder, **model_args)`; then gradient checkpointing and adapters (`peft`)
    as the config asks."""
    from train.fronts.models import MODELS

    model = resolve(cfg.model, MODELS, "model")
    args = dict(cfg.model_args)
    if cfg.pretrained:
        net = from_pretrained(model, cfg.pretrained, args, cfg.model)
    else:
        if cfg.model in MODELS:  # sized by the data (data.num_classes null: the model's default, 10)
            classes = {"num_classes": cfg.data.num_classes} if cfg.data.num_classes else {}
            args = {"in_channels": in_channels, **classes, **args}
        net = instantiate(model, args, "model", cfg.model)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model '{cfg.model}' gave a {type(net).__name__}, not a torch.nn.Module")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(net, cfg.model)
    if cfg.peft.method != "none":
        from train.engine.adapters import with_adapters

        net = with_adapters(net, cfg.peft, cfg.model)
    return net


def from_pretrained(cls, folder: str, args: dict, name: str) -> nn.Module:
    """`cls.from_pretrained(folder, **args)` from a local folder only (nothing is downloaded)."""
    check_pretrained(folder, cls, name)
    try:
        return cls.from_pretrained(folder, local_files_only=True, **args)
    except Exception as e:
        from train.base.errors import describe

        raise ConfigError(f"model '{name}' cannot load pretrained '{folder}': {describe(e)}") from None


def check_pretrained(folder: str, cls, name: str) -> None:
    """A model class `cls` with `from_pretrained` and a `pretrained` folder that `save_pretrained`
    wrote, or a one-line `ConfigError` saying what is there instead and what makes the folder: a
    run writes `hf/` in its output folder when it finishes, so the usual mistakes are a run not
    trained yet, not finished, or named instead of its `hf/`. Called before any data is read, so
    that the refusal writes nothing."""
    from pathlib import Path

    from train.saving.export import HF_DIR

    if not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"pretrained is set but model '{name}' has no from_pretrained; name a class that has "
                          f"(e.g. transformers:AutoModelForCausalLM)")
    path = Path(folder)
    if (path / "config.json").is_file():
        return
    if (path / HF_DIR / "config.json").is_file():
        raise ConfigError(f"pretrained '{folder}' is a run's folder; its model is in {path / HF_DIR}: set "
                          f"pretrained={path / HF_DIR}")
    if (path / "adapter_config.json").is_file() or (path / HF_DIR / "adapter_config.json").is_file():
        merged = (path if path.name != HF_DIR else path.parent) / "hf-merged"
        instead = (f"; its adapters merged into the weights are in {merged}: pretrained={merged}"
                   if (merged / "config.json").is_file() else "; give the base model's folder it was trained on")
        raise ConfigError(f"pretrained '{folder}' holds LoRA adapters, not a whole model{instead}")
    run = path if (path / "config.yaml").is_file() else path.parent if path.name == HF_DIR and not path.exists() \
        else None
    if run is not None and (run / "model.safetensors").is_file():
        raise ConfigError(f"pretrained '{folder}': the run in {run} finished without a {HF_DIR}/ folder (its model "
                          f"has no save_pretrained); give a folder written by save_pretrained")
    if run is not None and (run / "config.yaml").is_file():
        raise ConfigError(f"pretrained '{folder}': the run in {run} has not finished (its {HF_DIR}/ is written at the "
                          f"end); run its command again to finish it, then this one")
    if run is not None:
        made_by = configs_writing(run)
        how = f": {made_by}" if made_by else f" with output_dir={run}"
        raise ConfigError(f"pretrained '{folder}' does not exist yet: it is the {HF_DIR}/ folder a run writes when it "
                          f"finishes; train that run first{how}")
    made_by = "" if path.exists() else configs_writing(path)
    if made_by:  # a run's output folder named instead of its hf/, and that run not trained yet
        raise ConfigError(f"pretrained '{folder}' does not exist yet: it is a run's output folder, whose model will be "
                          f"in {path / HF_DIR}; train that run first ({made_by}), then set pretrained={path / HF_DIR}")
    why = "no config.json there" if path.is_dir() else "no such folder"
    raise ConfigError(f"pretrained '{folder}' is not a folder written by save_pretrained ({why}); give such a "
                      f"folder, e.g. a finished run's {HF_DIR}/ (nothing is downloaded)")


def configs_writing(run_folder) -> str:
    """The project's configs whose run writes `run_folder`, as the commands that train them
    ('launch/one.sh --config examples/lm/config.yaml'), or ''."""
    import os
    from pathlib import Path

    import yaml

    from train.base.paths import ROOT

    target = os.path.abspath(run_folder)
    commands = []
    for config in sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "examples").glob("*/*.yaml")]):
        try:
            out = (yaml.safe_load(config.read_text()) or {}).get("output_dir")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if out and os.path.abspath(out) == target:
            shown = config.relative_to(ROOT) if Path.cwd() == ROOT else config
            commands.append(f"launch/one.sh --config {shown}")
    return " or ".join(commands)


def enable_gradient_checkpointing(net: nn.Module, name: str) -> None:
    """Activations recomputed in the backward pass (the non-reentrant form, which needs no input
    that requires gradients and so works under adapters too)."""
    if not getattr(net, "supports_gradient_checkpointing", True):
        enable = None
    elif hasattr(net, "activation_checkpointing_enable"):  # transformers >= 5.24's name
        enable = lambda: net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # noqa: E731
    elif hasattr(net, "gradient_checkpointing_enable"):
        enable = lambda: net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # noqa: E731
    else:
        enable = None
    if enable is None:
        raise ConfigError(f"gradient_checkpointing is true but model '{name}' does not support it (no "
                          f"gradient_checkpointing_enable); set it to false")
    enable()


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
        return instantiate(loss, args, "loss", name)
    if not callable(loss):
        raise ConfigError(f"loss '{name}' is a {type(loss).__name__}, not a callable loss(y_pred, y_true)")
    return functools.partial(loss, **args) if args else loss


def build_metrics(names) -> dict:
    """`{column name: metric}`: built-ins by name, else imported functions f(y_pred, y_true), or
    classes with update/compute/reset (instantiated without arguments)."""
    from train.engine.metrics import METRICS, is_metric

    metrics = {}
    for name in names:
        metric = resolve(name, METRICS, "metric")
        if inspect.isclass(metric):
            metric = instantiate(metric, {}, "metric", name)
        if not is_metric(metric):
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
            made = instantiate(made, args, "callback", name)
        callbacks.append(made)
    return callbacks


def build_optimizer(cfg, params, device=None, graphed: bool = False) -> torch.optim.Optimizer:
    """`cfg` is the `optimizer` section of the config. A built-in optimizer on a CUDA `device` uses
    its fastest implementation (`cuda_implementation`); one named by an import path is left as given."""
    cls = resolve(cfg.name, OPTIMIZERS, "optimizer")
    args = {"lr": cfg.lr, **({"weight_decay": cfg.weight_decay} if cfg.weight_decay or cfg.name in OPTIMIZERS else {}),
            **({"momentum": cfg.momentum} if cfg.name in WITH_MOMENTUM else {}), **cfg.args}
    chosen = {"fused", "foreach", "capturable"} & set(cfg.args)  # the user's choice of implementation stands
    if cfg.name in OPTIMIZERS and device is not None and torch.device(device).type == "cuda" and not chosen:
        args = {**cuda_implementation(cls, graphed), **args}
    optimizer = instantiate(cls, args, "optimizer", cfg.name, params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer '{cfg.name}' gave a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    return optimizer


def cuda_implementation(cls, graphed: bool) -> dict:
    """The keyword that makes a torch optimizer fastest on a GPU: one fused kernel for all parameters
    (`fused=True`: Adam, AdamW, SGD; the eager step of a launch-bound model spends most of its host
    time in the optimizer); for a step captured in a CUDA graph, `capturable=True` (foreach kernels
    that read the learning rate and betas from the device, so a schedule changes them between
    replays; fused kernels take betas as constants), else fused (SGD: its fused kernel reads the
    learning rate from the device too). Nothing where the class has neither."""
    accepts = inspect.signature(cls).parameters
    if graphed and "capturable" in accepts:
        return {"capturable": True}
    return {"fused": True} if "fused" in accepts else {}


def build_scheduler(cfg, optimizer, epochs: int, steps_per_epoch):
    """`cfg` is the `scheduler` section; `steps_per_epoch` counts optimizer steps per process (None:
    unknown, a stream's). Returns None for `name: none`."""
    if cfg.interval == "step" and cfg.name != "none" and steps_per_epoch is None:
        raise ConfigError(f"scheduler.name={cfg.name} stepped per optimizer step needs the steps of a run, but the "
                          f"training stream has no length; set steps_per_epoch, or scheduler.interval=epoch")
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
    return instantiate(resolve(cfg.name, builtins, "scheduler"), cfg.args, "scheduler", cfg.name, optimizer)
