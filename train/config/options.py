"""Run options: everything a run does besides the training step, in one checked place.

Every front fills a `RunOptions`: the script from its config, `Model.compile`/`Model.fit` and
`train_model` from their arguments. Values are checked here, once, with a one-line `UserError`
that names the option; the fronts only translate. This module knows nothing of torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from train.config.monitor import MODES
from train.base.text import did_you_mean
from train.base.errors import UserError, check_choice

PRECISIONS = ("no", "bf16", "fp16", "auto")
NONFINITE = ("stop", "skip")
SCHEDULER_INTERVALS = ("epoch", "step")
TRACKERS = ("wandb", "tensorboard", "mlflow")
STRATEGIES = ("ddp", "fsdp")
PROFILE_KEYS = ("steps", "start_step", "activities", "memory", "record_shapes")
PROFILE_ACTIVITIES = ("cpu", "cuda")
EMA_KEYS = ("decay", "every_n_steps", "start_step", "warmup", "validate")
EMA_VALIDATE = ("averaged", "both")


def option(default=None, key: str = "", from_config=None, choices: tuple = ()):
    """A run option: its default and where the script's config holds it: a dotted config `key` (the
    same value under another name), or `from_config(cfg)` when it is made from several keys; neither
    for an option only the Python fronts set. The one place where the two schemas meet."""
    meta = {"key": key, "from_config": from_config, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class RunOptions:
    # outputs, checkpoints and resume (nothing is written without an output_dir)
    output_dir: Optional[str] = option(None, "output_dir")
    resume: str = option("auto", "resume")  # auto: the newest intact checkpoint in output_dir; none; a checkpoint
    checkpoint: bool = option(True, "checkpoint.enabled")  # checkpoints in <output_dir>/checkpoints (to resume)
    checkpoint_every: Optional[int] = option(None, "checkpoint.every_steps")  # also every N optimizer steps
    keep_last: int = option(2, "checkpoint.keep_last")
    checkpoint_memory_every: Optional[int] = option(None, "checkpoint.memory_every_steps")  # to node memory too
    checkpoint_async: bool = option(False, "checkpoint.async_save")  # written in the background (train.saving.background)
    checkpoint_monitor: Optional[str] = option(None, "checkpoint.monitor")  # picks `best`; None: val_loss, else loss
    checkpoint_mode: str = option("auto", "checkpoint.mode", choices=MODES)  # auto: by the column's name
    # the computation
    seed: Optional[int] = option(None, "seed")  # seeds Python, NumPy, torch and the data order at the start of fit
    mixed_precision: Optional[str] = option(None, "mixed_precision", choices=PRECISIONS)  # None: the launcher's
    gradient_accumulation_steps: int = option(1, "gradient_accumulation_steps")
    steps_per_epoch: Optional[int] = option(None, "steps_per_epoch")  # at most this many optimizer steps an epoch
    max_grad_norm: Optional[float] = option(None, "max_grad_norm")
    nonfinite: str = option("stop", "nonfinite", choices=NONFINITE)  # a NaN/inf loss: stop (exit 3) or skip the step
    compile: bool = option(False, "compile")  # torch.compile the model (inductor)
    channels_last: bool = option(False, "channels_last")
    tf32: Optional[bool] = option(None, "tf32")
    deterministic: bool = option(True, "deterministic")  # deterministic kernels on every device
    graphs: bool = option(False, "graphs")  # the whole step in one CUDA graph (train.engine.step_graph)
    strategy: str = option("ddp", "strategy", choices=STRATEGIES)  # how the model is spread over processes
    fsdp: dict = option({}, from_config=lambda cfg: dataclasses.asdict(cfg.fsdp))  # strategy=fsdp's settings
    num_classes: Optional[int] = option(None)  # a classification loss: checked against the model's output width
    collective_timeout_s: Optional[float] = option(600.0, "collective_timeout_s")  # a process waiting longer ends it
    peak_tflops: Optional[float] = option(None, "device.peak_tflops")  # one device's peak, for mfu (train.engine.peak_flops)
    profile: dict = option({}, from_config=lambda cfg: dataclasses.asdict(cfg.profile))  # {} or steps 0: off
    ema: dict = option({}, from_config=lambda cfg: dataclasses.asdict(cfg.ema))  # weight averaging; {} or no decay: off
    # what a person sees
    trackers: tuple = option((), from_config=lambda cfg: tuple(
        name for name in TRACKERS if getattr(cfg.tracking, name)))  # "wandb", "tensorboard", "mlflow"
    tracking_project: str = option("train", "tracking.project")
    tracking_entity: Optional[str] = option(None, "tracking.entity")
    tracking_run_name: Optional[str] = option(None, "tracking.run_name")
    tracking_tags: tuple = option((), "tracking.tags")
    tracking_group: Optional[str] = option(None, "tracking.group")
    early_stopping: Optional[str] = option(None, "early_stopping.monitor")  # a history column, e.g. "val_loss"
    early_stopping_mode: str = option("auto", "early_stopping.mode", choices=MODES)
    early_stopping_patience: int = option(3, "early_stopping.patience")
    early_stopping_min_delta: float = option(0.0, "early_stopping.min_delta")
    early_stopping_restore_best: bool = option(False, "early_stopping.restore_best")
    progress: Optional[bool] = option(None, "progress")  # a bar; None: only when stdout is a terminal
    log_every_s: float = option(30.0, "log_every_s")  # without a terminal: a progress line every N seconds
    log_step_freq: Optional[int] = option(None, "log_step_freq")  # running metrics every N batches (a device sync)
    step_lines: bool = option(False)  # the tutorial's "[step = N] loss: ..." lines at each log point
    name: Optional[str] = option(None, "model")  # the model's name in the plan
    export_merged: bool = option(False, "peft.merged_export")  # a peft model: also hf-merged/, adapters merged in

    def __post_init__(self):
        self.trackers = tuple(self.trackers or ())
        self.tracking_tags = tuple(self.tracking_tags or ())
        self.resume = normalised_resume(self.resume)
        for f in dataclasses.fields(self):
            if f.metadata["choices"] and getattr(self, f.name) is not None:
                check_choice(f.name, getattr(self, f.name), f.metadata["choices"])
        for tracker in self.trackers:
            check_choice("each of trackers", tracker, TRACKERS)
        for name in ("gradient_accumulation_steps", "keep_last", "log_every_s"):
            _positive(name, getattr(self, name))
        for name in ("checkpoint_every", "checkpoint_memory_every", "max_grad_norm", "log_step_freq", "collective_timeout_s", "num_classes",
                     "steps_per_epoch", "peak_tflops"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise UserError("early_stopping_patience and early_stopping_min_delta must be >= 0")
        self.profile = checked_profile(self.profile or {})
        self.ema = checked_ema(self.ema or {})
        if self.ema["decay"] and self.strategy == "fsdp":
            raise UserError("ema does not average sharded weights yet; use strategy=ddp with ema")
        if self.ema["decay"] and self.early_stopping_restore_best:
            raise UserError("early_stopping.restore_best does not put back averaged weights (ema) yet; leave it false "
                            "and load the best checkpoint's averages with train.load_model(run, checkpoint='best')")


def checked_ema(ema: dict) -> dict:
    """Weight averaging's settings with their defaults (train.engine.averaging), or one line on what is wrong."""
    unknown = [k for k in ema if k not in EMA_KEYS]
    if unknown:
        raise UserError(f"ema has no key '{unknown[0]}'; "
                        + did_you_mean(unknown[0], EMA_KEYS, otherwise=f"its keys: {', '.join(EMA_KEYS)}"))
    ema = {"decay": None, "every_n_steps": 1, "start_step": 0, "warmup": False, "validate": "averaged", **ema}
    if ema["decay"] is not None and (isinstance(ema["decay"], bool) or not isinstance(ema["decay"], (int, float))
                                     or not 0 < ema["decay"] < 1):
        raise UserError(f"ema.decay must be between 0 and 1 (e.g. 0.999), or null for no averaging; got {ema['decay']!r}")
    for name, least in (("every_n_steps", 1), ("start_step", 0)):
        if isinstance(ema[name], bool) or not isinstance(ema[name], int) or ema[name] < least:
            raise UserError(f"ema.{name} must be a whole number >= {least}; got {ema[name]!r}")
    check_choice("ema.validate", ema["validate"], EMA_VALIDATE)
    return ema


def checked_profile(profile: dict) -> dict:
    """The profiler's settings with their defaults (train.callbacks.profiler), or one line on what is wrong."""
    unknown = [k for k in profile if k not in PROFILE_KEYS]
    if unknown:
        raise UserError(f"profile has no key '{unknown[0]}'; "
                        + did_you_mean(unknown[0], PROFILE_KEYS, otherwise=f"its keys: {', '.join(PROFILE_KEYS)}"))
    profile = {"steps": 0, "start_step": 3, "activities": [], "memory": False, "record_shapes": False, **profile}
    for name, least in (("steps", 0), ("start_step", 1)):
        value = profile[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"profile.{name} must be a whole number >= {least}; got {value!r}")
    activities = profile["activities"] or []
    if isinstance(activities, str) or any(a not in PROFILE_ACTIVITIES for a in activities):
        raise UserError(f"profile.activities must be a list of {', '.join(PROFILE_ACTIVITIES)}; got {activities!r}")
    profile["activities"] = list(activities)
    return profile


def normalised_resume(value) -> str:
    """`resume` as the run reads it: "auto", "none" (also for null, false, no) or a checkpoint path."""
    if value is None or str(value).lower() in ("none", "null", "false", "no"):
        return "none"
    return str(value)


def options_from(cfg) -> RunOptions:
    """The run options a config holds (everything but the model, the data and the optimizer), each
    from the key its field names."""
    values = {}
    for f in dataclasses.fields(RunOptions):
        if f.metadata["from_config"] is not None:
            values[f.name] = f.metadata["from_config"](cfg)
        elif f.metadata["key"]:
            value = cfg
            for part in f.metadata["key"].split("."):
                value = getattr(value, part)
            values[f.name] = value
    return RunOptions(**values)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{name} must be a number > 0; got {value!r}")


def run_options(where: str, **kwargs) -> RunOptions:
    """`RunOptions(**kwargs)`, with a did-you-mean for a misspelt name (`where` names the call)."""
    known = [f.name for f in dataclasses.fields(RunOptions)]
    for key in kwargs:
        if key not in known:
            hint = did_you_mean(key, known, otherwise=f"the options are: {', '.join(known)}")
            raise UserError(f"{where} got an unknown option '{key}'; {hint}")
    return RunOptions(**kwargs)
