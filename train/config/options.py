"""Run options: everything a run does besides the training step, in one checked place.

Every front fills a `RunOptions`: the script from its config, `Model.compile`/`Model.fit` and
`train_model` from their arguments. Values are checked here, once, with a one-line `UserError`
that names the option; the fronts only translate. This module knows nothing of torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Optional

from train.base.errors import UserError, check_choice

PRECISIONS = ("no", "bf16", "fp16", "auto")
NONFINITE = ("stop", "skip")
SCHEDULER_INTERVALS = ("epoch", "step")
MODES = ("min", "max")
TRACKERS = ("wandb", "tensorboard")


@dataclass
class RunOptions:
    # outputs, checkpoints and resume (nothing is written without an output_dir)
    output_dir: Optional[str] = None
    resume: str = "auto"  # auto: the newest intact checkpoint in output_dir; none; or a checkpoint path
    checkpoint: bool = True  # checkpoints in <output_dir>/checkpoints (needed to resume)
    checkpoint_every: Optional[int] = None  # also every N optimizer steps; None: at epoch ends only
    keep_last: int = 2
    checkpoint_monitor: Optional[str] = None  # the column that picks `best`; None: val_loss, else loss
    checkpoint_mode: str = "min"
    # the computation
    seed: Optional[int] = None  # seeds Python, NumPy, torch and the data order at the start of fit
    mixed_precision: Optional[str] = None  # no | bf16 | fp16 | auto (bf16 where fast); None: the launcher's
    gradient_accumulation_steps: int = 1
    steps_per_epoch: Optional[int] = None  # at most this many optimizer steps an epoch (a stream without a length)
    max_grad_norm: Optional[float] = None
    nonfinite: str = "stop"  # a NaN/inf loss: stop (exit 3) or skip the optimizer step
    compile: bool = False  # torch.compile the model (inductor)
    channels_last: bool = False
    tf32: Optional[bool] = None
    num_classes: Optional[int] = None  # with a classification loss: checked against the model's output width
    collective_timeout_s: Optional[float] = 600.0  # a process waiting longer for the others ends the run
    # what a person sees
    trackers: tuple = ()  # "wandb", "tensorboard"
    tracking_project: str = "train"
    tracking_entity: Optional[str] = None
    tracking_run_name: Optional[str] = None
    tracking_tags: tuple = ()
    tracking_group: Optional[str] = None
    early_stopping: Optional[str] = None  # a history column to watch, e.g. "val_loss"
    early_stopping_mode: str = "min"
    early_stopping_patience: int = 3
    early_stopping_min_delta: float = 0.0
    early_stopping_restore_best: bool = False
    progress: Optional[bool] = None  # a bar; None: only when stdout is a terminal
    log_every_s: float = 30.0  # without a terminal: a progress line every N seconds
    log_step_freq: Optional[int] = None  # running metrics every N batches (a device sync each)
    step_lines: bool = False  # the tutorial's "[step = N] loss: ..." lines at each log point
    name: Optional[str] = None  # the model's name in the plan
    export_merged: bool = False  # a peft model: also hf-merged/, the adapters merged into the weights

    def __post_init__(self):
        self.trackers = tuple(self.trackers or ())
        self.tracking_tags = tuple(self.tracking_tags or ())
        if self.resume is None or str(self.resume).lower() in ("none", "null", "false", "no"):
            self.resume = "none"
        self.resume = str(self.resume)
        if self.mixed_precision is not None:
            check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        check_choice("nonfinite", self.nonfinite, NONFINITE)
        check_choice("checkpoint_mode", self.checkpoint_mode, MODES)
        check_choice("early_stopping_mode", self.early_stopping_mode, MODES)
        for tracker in self.trackers:
            check_choice("each of trackers", tracker, TRACKERS)
        for name in ("gradient_accumulation_steps", "keep_last", "log_every_s"):
            _positive(name, getattr(self, name))
        for name in ("checkpoint_every", "max_grad_norm", "log_step_freq", "collective_timeout_s", "num_classes",
                     "steps_per_epoch"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise UserError("early_stopping_patience and early_stopping_min_delta must be >= 0")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{name} must be a number > 0; got {value!r}")


def run_options(where: str, **kwargs) -> RunOptions:
    """`RunOptions(**kwargs)`, with a did-you-mean for a misspelt name (`where` names the call)."""
    known = [f.name for f in dataclasses.fields(RunOptions)]
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"the options are: {', '.join(known)}"
            raise UserError(f"{where} got an unknown option '{key}'; {hint}")
    return RunOptions(**kwargs)
