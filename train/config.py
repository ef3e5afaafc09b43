"""The run configuration: schema, YAML loading, `key=value` overrides and validation.

Everything a run needs is one `Config` (dataclasses, so the keys are typed and listed in one
place). `load_config(path, overrides)` reads a YAML file, applies dotted overrides such as
`optimizer.lr=0.02`, checks names, types and ranges, and raises `ConfigError` with a one-line
message that says what to change. This module knows nothing of torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

CHOICES = {
    "mixed_precision": ("no", "bf16", "fp16"),
    "loss": ("cross_entropy", "nll"),
    "data.source": ("mnist", "torchvision", "hf"),
    "optimizer.name": ("adam", "adamw", "sgd"),
    "scheduler.name": ("none", "step", "cosine", "onecycle"),
    "scheduler.interval": ("epoch", "step"),
    "nonfinite": ("stop", "skip"),
    "checkpoint.mode": ("min", "max"),
    "early_stopping.mode": ("min", "max"),
}


@dataclass
class DataConfig:
    source: str = "mnist"  # mnist (IDX files in `path`), torchvision (class `name`), hf (`datasets`)
    path: str = "data/mnist"  # folder with the files; root for torchvision; data_dir for hf
    name: Optional[str] = None  # torchvision class ("FashionMNIST") or hf builder/hub name ("parquet")
    train_split: str = "train"
    val_split: str = "test"
    image_column: str = "image"  # hf only
    label_column: str = "label"  # hf only
    download: bool = False  # torchvision/hf: allowed to fetch from the network
    train_size: Optional[int] = None  # first N training samples (smoke runs); None = all
    val_size: Optional[int] = None  # first N validation samples; None = all
    num_classes: int = 10
    num_workers: Optional[int] = None  # None = chosen by the rule in data.choose_num_workers
    pin_memory: Optional[bool] = None  # None = only when batches go from host memory to a CUDA device
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead; None = torch's default (2)
    in_memory_limit_mb: int = 2048  # data sets up to this size (uint8) take the in-memory fast path


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only


@dataclass
class SchedulerConfig:
    name: str = "none"
    interval: str = "epoch"  # step the schedule once per epoch or once per optimizer step
    step_size: int = 1  # step: decay every step_size intervals
    gamma: float = 0.1  # step: decay factor


@dataclass
class TrackingConfig:
    wandb: bool = False  # Weights & Biases (WANDB_MODE=offline works without network)
    tensorboard: bool = False  # TensorBoard event files in <output_dir>/tensorboard
    project: str = "train"
    entity: Optional[str] = None
    run_name: Optional[str] = None
    tags: list = field(default_factory=list)


@dataclass
class CheckpointConfig:
    enabled: bool = True  # checkpoints in <output_dir>/checkpoints (needed to resume)
    every_steps: Optional[int] = None  # also every N optimizer steps within an epoch; None = at epoch ends only
    keep_last: int = 2  # the N most recent are kept (plus the best)
    monitor: Optional[str] = None  # history column that picks the best; None = val_loss, or loss without validation
    mode: str = "min"  # min | max: whether a lower or a higher `monitor` is better


@dataclass
class EarlyStoppingConfig:
    monitor: Optional[str] = None  # history column to watch (e.g. val_loss); None = no early stopping
    mode: str = "min"
    patience: int = 3  # epochs without an improvement of more than min_delta before stopping
    min_delta: float = 0.0
    restore_best: bool = False  # end with the weights of the best epoch instead of the last


@dataclass
class Config:
    model: str = "tutorial_cnn"
    epochs: int = 3
    batch_size: int = 128  # per process
    seed: int = 42
    output_dir: str = "runs/mnist"
    mixed_precision: Optional[str] = None  # no | bf16 | fp16; None = the launcher's choice, else no
    gradient_accumulation_steps: int = 1
    max_grad_norm: Optional[float] = None  # clip gradients to this norm; None = no clipping
    log_step_freq: int = 100  # read running metrics back from the device every N steps
    log_every_s: float = 30.0  # without a terminal: one progress line every N seconds
    progress: Optional[bool] = None  # a progress bar; None = only when stdout is a terminal
    preflight: bool = False  # a few batches, a checkpoint round trip, then exit (see train.preflight)
    compile: bool = False  # torch.compile the model (inductor): slower start, faster steps on GPUs
    channels_last: bool = False  # NHWC memory layout for conv nets (tensor cores like it)
    tf32: Optional[bool] = None  # TF32 matmuls and convolutions on NVIDIA GPUs; None = torch's defaults
    resume: Optional[str] = "auto"  # auto: continue from <output_dir>/checkpoints/latest if any; none; or a checkpoint path
    nonfinite: str = "stop"  # a NaN/inf loss: stop (exit 3, last good checkpoint kept) or skip the step
    collective_timeout_s: float = 600.0  # a process waiting longer for the others ends the run (a stall)
    loss: str = "cross_entropy"
    metrics: list = field(default_factory=lambda: ["accuracy"])
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def all_keys(cls=Config, prefix: str = "") -> dict[str, tuple[type, Any]]:
    """Every dotted key of the schema with its type and default, in declaration order."""
    keys = {}
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys.update(all_keys(kind, f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = (kind, getattr(default, f.name))
    return keys


def describe_keys() -> str:
    """The `--help` listing: one line per key with its default."""
    lines = []
    for key, (_, default) in all_keys().items():
        choices = CHOICES.get(key)
        extra = f"  ({' | '.join(choices)})" if choices else ""
        lines.append(f"  {key} = {default!r}{extra}")
    return "\n".join(lines)


def _closest(key: str, known) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else "; run with --help to list the keys"


def _coerce(key: str, value: Any, kind) -> Any:
    """Check `value` against the annotated type of `key`; ints are accepted where floats are."""
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is list and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(
            f"config key '{key}' expects {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + str(k)] = v
    return flat


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass an existing file with --config")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start:  # where the unclosed bracket or quote began
            problem += f" ({context} at line {start.line + 1})"
        raise ConfigError(f"config file '{path}' has a YAML syntax error{where}: {problem}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(tree).__name__}")
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """`optimizer.lr=0.02` -> ("optimizer.lr", 0.02); the value is read as YAML (numbers, null, lists)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. epochs=1)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(values: dict) -> Config:
    """A validated `Config` from a flat {dotted key: value} mapping over the defaults."""
    known = all_keys()
    cfg = Config()
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{key}'{_closest(key, known)}")
        kind, _ = known[key]
        *parents, leaf = key.split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, _coerce(key, value, kind))
    validate(cfg)
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Read the YAML file at `path` (or the defaults), apply `key=value` overrides, validate."""
    values = _flatten(_read_yaml(Path(path))) if path else {}
    values.update(parse_override(o) for o in overrides)
    return build_config(values)


def validate(cfg: Config) -> None:
    """Range and choice checks that types alone cannot express."""
    flat = _flatten(cfg.to_dict())
    for key, choices in CHOICES.items():
        if flat[key] not in choices and not (key == "mixed_precision" and flat[key] is None):
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {flat[key]!r}")
    positive = ("batch_size", "gradient_accumulation_steps", "log_step_freq", "data.num_classes")
    for key in positive:
        if flat[key] <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]}")
    if cfg.data.prefetch_factor is not None and cfg.data.prefetch_factor <= 0:
        raise ConfigError(f"config key 'data.prefetch_factor' must be > 0 or null, got {cfg.data.prefetch_factor}")
    for key in ("epochs", "data.train_size", "data.val_size", "data.num_workers"):
        if flat[key] is not None and flat[key] < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {flat[key]}")
    for key in ("log_every_s", "collective_timeout_s"):
        if flat[key] <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]}")
    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"config key 'optimizer.lr' must be > 0, got {cfg.optimizer.lr}")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise ConfigError(f"config key 'max_grad_norm' must be > 0 or null, got {cfg.max_grad_norm}")
    if cfg.checkpoint.every_steps is not None and cfg.checkpoint.every_steps <= 0:
        raise ConfigError(f"config key 'checkpoint.every_steps' must be > 0 or null, got {cfg.checkpoint.every_steps}")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError(f"config key 'checkpoint.keep_last' must be >= 1, got {cfg.checkpoint.keep_last} "
                          f"(checkpoint.enabled=false turns checkpoints off)")
    if cfg.early_stopping.patience < 0 or cfg.early_stopping.min_delta < 0:
        raise ConfigError("config keys 'early_stopping.patience' and 'early_stopping.min_delta' must be >= 0")
    if cfg.resume is None or str(cfg.resume).lower() in ("none", "null", "false", "no"):
        cfg.resume = "none"
    monitors = [("checkpoint.monitor", cfg.checkpoint.monitor), ("early_stopping.monitor", cfg.early_stopping.monitor)]
    for key, column in monitors:
        if column is not None and cfg.data.val_size == 0 and column.startswith("val_"):
            raise ConfigError(f"config key '{key}' is '{column}' but there is no validation data (data.val_size=0); "
                              f"monitor a training column such as '{column[4:]}' or give validation data")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically), so a run can be repeated from its output."""
    import yaml

    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
