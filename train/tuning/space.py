"""A search space: config keys and the ranges a search draws their values from.

    optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
    batch_size: {choice: [64, 128, 256]}
    model_args.hidden: {int: [16, 256]}          # {int: [16, 256], log: true} draws on a log scale
    model_args.dropout: {uniform: [0.0, 0.5]}

Each entry is checked once, before any trial: the key must be one a config takes (the project's
own config checks decide, with the range's ends as values), and the range must be one Optuna can
sample. The values an Optuna trial draws come back as `key=value` overrides.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from train.base.errors import ConfigError

KINDS = ("log_uniform", "uniform", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str
    low: Any = None
    high: Any = None
    choices: tuple = ()
    log: bool = False

    def suggest(self, trial):
        """The value an Optuna trial draws (or is given: an enqueued trial's)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log_uniform")

    def holds(self, value) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (self.kind != "int" or float(value).is_integer())

    def describe(self) -> str:
        """`optimizer.lr log_uniform [0.0001, 0.1]`, as the space file says it."""
        values = list(self.choices) if self.kind == "choice" else [self.low, self.high]
        return f"{self.key} {self.kind} {values}" + (" log" if self.kind == "int" and self.log else "")

    @property
    def is_log(self) -> bool:
        return self.kind == "log_uniform" or self.log


def override(key: str, value) -> str:
    """`key=value` as the config reads it back with the same type: written by PyYAML itself (a bare
    `5e-05` would read back as a string; PyYAML writes `5.0e-05`)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return f"{key}={text.removesuffix(chr(10) + '...' + chr(10)).strip()}"


def parse_space(space: dict, where: str) -> list[Dimension]:
    """The space's dimensions, in the order given; a `ConfigError` (one line) for a bad entry."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: the search space is empty; give config keys and ranges, e.g. "
                          f"optimizer.lr: {{log_uniform: [1.0e-4, 1.0e-1]}}")
    return [_dimension(str(key), spec, where) for key, spec in space.items()]


def _dimension(key: str, spec, where: str) -> Dimension:
    def bad(why: str):
        return ConfigError(f"{where}: {key}: {why}")

    if not isinstance(spec, dict) or len([k for k in spec if k in KINDS]) != 1:
        raise bad(f"expected one of {', '.join(KINDS)} (e.g. {{log_uniform: [1.0e-4, 0.1]}}), got {spec!r}")
    kind = next(k for k in spec if k in KINDS)
    extra = set(spec) - {kind, "log"} if kind == "int" else set(spec) - {kind}
    if extra:
        raise bad(f"unknown field(s) {', '.join(map(str, sorted(extra)))} beside {kind}")
    values = spec[kind]
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise bad(f"choice needs a non-empty list of values, got {values!r}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise bad(f"choice lists a value twice: {values!r}")
        return Dimension(key, kind, choices=tuple(values))
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise bad(f"{kind} needs [low, high] (two numbers), got {values!r}")
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise bad(f"{kind} needs low < high, got [{low}, {high}]")
    log = bool(spec.get("log", False))
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise bad(f"int needs whole numbers, got [{low}, {high}]")
        low, high = int(low), int(high)
    if (kind == "log_uniform" or log) and low <= 0:
        raise bad(f"a log scale needs low > 0, got [{low}, {high}]")
    return Dimension(key, kind, float(low) if kind != "int" else low, float(high) if kind != "int" else high,
                     log=log)


def check_keys(dimensions: list[Dimension], config_path, overrides: list[str], where: str) -> None:
    """Each dimension's key, with each end of its range (each choice), is a config the project's own
    checks accept (a key that is no config key, a float where an int belongs, ... is one line)."""
    from train.config.loading import load_config

    for d in dimensions:
        for value in (d.choices if d.kind == "choice" else (d.low, d.high)):
            try:
                load_config(config_path, [*overrides, override(d.key, value)])
            except ConfigError as e:
                raise ConfigError(f"{where}: {d.key}: {e}") from None
