"""Config files: YAML + `key=value` overrides -> a checked `Config`, and the `--help` listing.

`load_config(path, overrides)` reads a YAML file, applies dotted overrides such as `optimizer.lr=0.02`
or `model_args.hidden=64`, checks names, types and ranges, and raises `ConfigError` with one line
that says what to change. Names of models, losses, metrics, optimizers, schedules and data
factories are checked where they are resolved (`train.config.names`), with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Optional

from train.config.monitor import mode_of
from train.base.text import did_you_mean, flatten
from train.config.options import normalised_resume
from train.config.schema import Config
from train.base.errors import ConfigError
from train.base.paths import ROOT


def all_keys(cls=Config, prefix: str = "", values=None) -> dict[str, dict]:
    """Every dotted key of the schema: its type, value (the default, or `values`'), help and choices."""
    keys = {}
    hints = typing.get_type_hints(cls)
    values = values if values is not None else cls()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys.update(all_keys(kind, f"{prefix}{f.name}.", getattr(values, f.name)))
        else:
            keys[prefix + f.name] = dict(type=kind, value=getattr(values, f.name), help=f.metadata.get("help", ""),
                                         choices=f.metadata.get("choices", ()))
    return keys


def describe_keys(cfg: Optional[Config] = None, width: int = 100) -> str:
    """The `--help` listing: each key with its value in `cfg` (or the default) and its help."""
    import textwrap

    lines = []
    for name, k in all_keys(values=cfg).items():
        lines.append(f"  {name} = {k['value']!r}")
        lines += textwrap.wrap(k["help"], width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _closest(key: str, known) -> str:
    return "; " + did_you_mean(key, known, cutoff=0.5, otherwise="run with --help to list the keys")


def _coerce(key: str, value: Any, kind) -> Any:
    """Check `value` against the annotated type of `key`; ints are accepted where floats are."""
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if kind == typing.Union[int, str]:  # a number, or a word for "work it out" (batch_size: auto)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{key}' expects int, got {type(value).__name__} {value!r} (or a word: "
                              f"auto)")
        return value
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
    if kind is str and isinstance(value, bool):  # YAML 1.1 reads no/off/false as False: `mixed_precision=no`
        value = "yes" if value else "no"
    if kind is list and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if kind is dict and value is None:
        value = {}
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _read_yaml(path: Path) -> dict:
    import yaml

    if path.is_dir():
        inside = path / "config.yaml"
        hint = f" (a run's folder holds its config: --config {inside})" if inside.is_file() else ""
        raise ConfigError(f"config file '{path}' is a folder; pass a YAML file with --config{hint}")
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

    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. epochs=1)")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return name.strip(), value


def build_config(values: dict) -> Config:
    """A checked `Config` from a flat {dotted key: value} mapping over the defaults. A key inside a
    dict-typed key (`model_args.hidden`) sets that entry."""
    known = all_keys()
    cfg = Config()
    for name, value in values.items():
        entry = None
        if name not in known:  # model_args.hidden=64: an entry of the dict key model_args
            parent = next((p for p in known if known[p]["type"] is dict and name.startswith(p + ".")), None)
            if parent is None:
                raise ConfigError(f"unknown config key '{name}'{_closest(name, known)}")
            name, entry = parent, name[len(parent) + 1:]
        *parents, leaf = name.split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        if entry is not None:
            getattr(target, leaf)[entry] = value
        else:
            setattr(target, leaf, _coerce(name, value, known[name]["type"]))
    validate(cfg)
    return cfg


def load_config(path=None, overrides=()) -> Config:
    """Read the YAML file at `path` (or the defaults), apply `key=value` overrides, validate. A
    relative data path is taken from the working folder, else from the project folder (so that
    the script runs from anywhere)."""
    known = all_keys()
    values = flatten(_read_yaml(Path(path)), keep_whole=lambda key: known.get(key, {}).get("type") is dict) \
        if path else {}
    if path and "output_dir" not in values:  # a config of your own: runs/<its name>, not runs/mnist
        stem = Path(path).stem if Path(path).stem != "config" else Path(path).resolve().parent.name
        values["output_dir"] = f"runs/{stem}"
    values.update(parse_override(o) for o in overrides)
    cfg = build_config(values)
    data = Path(cfg.data.path)
    if not data.is_absolute() and not data.exists() and (ROOT / data).exists():
        cfg.data.path = str(ROOT / data)
    return cfg


def validate(cfg: Config) -> None:
    """Choice and range checks that types alone cannot express."""
    keys = all_keys(values=cfg)
    for name, k in keys.items():
        if k["choices"] and k["value"] not in k["choices"] and not (k["value"] is None and name == "mixed_precision"):
            raise ConfigError(f"config key '{name}' must be one of {', '.join(k['choices'])}; got {k['value']!r}")
    flat = {name: k["value"] for name, k in keys.items()}
    if isinstance(cfg.batch_size, str) and cfg.batch_size != "auto":
        raise ConfigError(f"config key 'batch_size' must be a number > 0 or auto; got {cfg.batch_size!r}")
    if cfg.batch_size == "auto":
        flat["batch_size"] = 1
    for name in ("batch_size", "gradient_accumulation_steps", "log_step_freq",
                 "log_every_s", "collective_timeout_s", "optimizer.lr", "data.in_memory_limit_mb", "sweep.trials"):
        if flat[name] <= 0:
            raise ConfigError(f"config key '{name}' must be > 0, got {flat[name]}")
    for name in ("data.prefetch_factor", "max_grad_norm", "checkpoint.every_steps", "data.num_classes",
                 "checkpoint.memory_every_steps",
                 "steps_per_epoch"):
        if flat[name] is not None and flat[name] <= 0:
            raise ConfigError(f"config key '{name}' must be > 0 or null, got {flat[name]}")
    for name in ("epochs", "data.train_size", "data.val_size", "data.num_workers"):
        if flat[name] is not None and flat[name] < 0:
            raise ConfigError(f"config key '{name}' must be >= 0, got {flat[name]}")
    if cfg.data.train_size == 0:
        raise ConfigError("config key 'data.train_size' must be > 0 or null (all); a run needs training data")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError(f"config key 'checkpoint.keep_last' must be >= 1, got {cfg.checkpoint.keep_last} "
                          f"(checkpoint.enabled=false turns checkpoints off)")
    if cfg.early_stopping.patience < 0 or cfg.early_stopping.min_delta < 0:
        raise ConfigError("config keys 'early_stopping.patience' and 'early_stopping.min_delta' must be >= 0")
    if cfg.data.source == "python" and not cfg.data.factory:
        raise ConfigError("data.source=python needs data.factory='package.module:function' (returning the "
                          "training and validation data sets)")
    cfg.resume = normalised_resume(cfg.resume)
    default_monitor = "val_loss" if cfg.data.val_size != 0 else "loss"  # what checkpoints/best watches by default
    cfg.checkpoint.mode = mode_of(cfg.checkpoint.monitor or default_monitor, cfg.checkpoint.mode)
    cfg.early_stopping.mode = mode_of(cfg.early_stopping.monitor, cfg.early_stopping.mode)
    monitors = [("checkpoint.monitor", cfg.checkpoint.monitor), ("early_stopping.monitor", cfg.early_stopping.monitor)]
    for name, column in monitors:
        if column is not None and cfg.data.val_size == 0 and column.startswith("val_"):
            raise ConfigError(f"config key '{name}' is '{column}' but there is no validation data (data.val_size=0); "
                              f"monitor a training column such as '{column[4:]}' or give validation data")


def save_config(cfg: Config, path) -> None:
    """Write the resolved config as YAML (atomically), so a run can be repeated from its output."""
    import yaml

    from train.base.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
