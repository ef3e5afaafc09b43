"""The script's run: a config turned into data, a model, an optimizer, a schedule and a `Run`.

This is all the script front adds to the class front: names and import paths in a YAML file
instead of objects in Python. Everything a run does with them is `train.Run`'s.
"""

from __future__ import annotations

import math

from train.base.errors import ConfigError



def build_model_class_only(cfg) -> None:
    """Resolve the model's import path (without building it), to fail fast on a typo."""
    from train.fronts.models import MODELS
    from train.config.names import resolve

    resolve(cfg.model, MODELS, "model")


def build_run(cfg):
    """The `Run` and the data loaders `cfg` describes, on every process; nothing is written."""
    from accelerate.utils import set_seed

    from train.fronts.building import (CLASSIFICATION_LOSSES, build_callbacks, build_loss, build_metrics, build_model,
                                       build_optimizer, build_scheduler, check_pretrained)
    from train.data.loaders import make_loaders
    from train.engine.devices import local_processes
    from train.config.names import resolve
    from train.fronts.models import MODELS
    from train.service.run import Run, accelerator_for
    from train.config.options import options_from
    from train.data.streams import is_stream
    from train.engine.step_graph import why_not

    options = options_from(cfg)
    loss, metrics = build_loss(cfg.loss, cfg.loss_args), build_metrics(cfg.metrics)
    callbacks = build_callbacks(cfg.callbacks)
    if cfg.model not in MODELS:
        build_model_class_only(cfg)  # a wrong import path says so before any data is read
    if cfg.pretrained:  # likewise a pretrained folder that is not there (yet)
        check_pretrained(cfg.pretrained, resolve(cfg.model, MODELS, "model"), cfg.model)
    accelerator = accelerator_for(options)
    classification = cfg.loss in CLASSIFICATION_LOSSES
    if cfg.data.num_classes is None and (cfg.model in MODELS or cfg.data.source != "python"):
        cfg.data.num_classes = 10  # MNIST's, as it always was (config.yaml records it)
    found = None
    if cfg.batch_size == "auto":  # a search on a throwaway copy; everything is built afresh below
        from train.fronts.batch_auto import resolve_batch_size

        found = resolve_batch_size(cfg, accelerator, options, cfg.data.num_classes if classification else None)
    set_seed(cfg.seed)  # the model's initial weights
    loaders = make_loaders(cfg, accelerator.device, local_processes(accelerator), seed=cfg.seed,
                           num_classes=cfg.data.num_classes if classification else None,
                           processes=accelerator.num_processes)
    options.num_classes = cfg.data.num_classes if classification else None  # the model's output width checked
    world = accelerator.num_processes
    stream = is_stream(loaders.train.dataset)
    if loaders.val is not None and not is_stream(loaders.val.dataset) and len(loaders.val.dataset) < world:
        raise ConfigError(f"the validation set has {len(loaders.val.dataset)} sample(s), fewer than the {world} "
                          f"processes; give data.val_size >= {world}, or data.val_size=0 for no validation")
    in_channels = loaders.train.dataset[0][0].shape[0] if cfg.model in MODELS else None  # built-ins only
    model = build_model(cfg, in_channels)
    graphed = options.graphs and why_not(accelerator, nonfinite=options.nonfinite, compiled=options.compile,
                                         metrics=metrics) is None
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), accelerator.device, graphed)
    if cfg.steps_per_epoch:
        steps_per_epoch = cfg.steps_per_epoch
    elif stream:
        steps_per_epoch = None  # a stream's length is unknown
    else:
        steps_per_epoch = math.ceil(math.ceil(len(loaders.train) / world) / cfg.gradient_accumulation_steps)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, steps_per_epoch)
    run = Run(model, optimizer, loss, metrics, scheduler=scheduler,
              scheduler_interval=cfg.scheduler.interval, options=options, accelerator=accelerator, config=cfg,
              plan_notes=[*([found] if found else []), *loaders.notes], origin={"in_channels": in_channels} if in_channels else {},
              callbacks=callbacks)
    return run, loaders
