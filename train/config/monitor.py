"""The one rule for "is this better": a history column, and whether lower or higher values of it
are better. `auto` (the default everywhere: checkpoints' best, early stopping, a search's
objective) takes `min` when the column's name says it measures an error, else `max`, as Keras'
`MonitorCallback` does. Plain Python: every layer above the config uses it."""

from __future__ import annotations

from typing import Iterable, Optional

MODES = ("auto", "min", "max")
LOWER_IS_BETTER = ("loss", "error", "err", "mae", "mse", "rmse", "mape", "perplexity", "ppl")


def mode_of(column: Optional[str], mode: str = "auto") -> str:
    """`min` or `max` for the column (`auto`: by its name; no column: `min`, a loss's)."""
    if mode != "auto":
        return mode
    return "min" if column is None or any(word in column.lower() for word in LOWER_IS_BETTER) else "max"


class Monitor:
    """A history column and which way is better; `improved` says whether a value beats the best so
    far by more than `min_delta`."""

    def __init__(self, column: Optional[str], mode: str = "auto", min_delta: float = 0.0):
        self.column, self.mode, self.min_delta = column, mode_of(column, mode), min_delta

    def improved(self, value: Optional[float], best: Optional[float]) -> bool:
        if value is None:
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def best(self, values: Iterable[float]) -> float:
        values = list(values)
        return min(values) if self.mode == "min" else max(values)
