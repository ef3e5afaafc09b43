"""The epoch history: one row per epoch, the same on every process, as a pandas DataFrame.

A row's columns, in order (the one definition that the loop, the CSV, the table and the plot use):
`epoch`, `loss`, each metric, `val_loss` and `val_<metric>` (with validation data), `lr` (the
epoch's first), `skipped_steps` (only with nonfinite=skip), then the timing columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from train.base.files import atomic_write

# bookkeeping: not quantities to plot
COUNT_COLUMNS = ("epoch", "lr", "skipped_steps")
# columns that differ between two runs of the same computation
TIMING_COLUMNS = ("epoch_s", "data_s", "compute_s", "samples_per_s", "tokens_per_s", "flops_per_s", "mfu",
                  "max_memory_mb")


def make_row(epoch: int, train: dict, val: dict, lr: float, skipped_steps: Optional[int], timing: dict) -> dict:
    """`train` holds `loss` and the metrics, `val` the same names prefixed `val_`."""
    row = {"epoch": epoch, **train, **val, "lr": lr}
    if skipped_steps is not None:
        row["skipped_steps"] = skipped_steps
    row.update(timing)
    return row


def metric_columns(metric_names: Iterable[str], validation: bool) -> list[str]:
    """The quantity columns a run's rows will have: loss and metrics, then their `val_` twins."""
    names = ["loss", *metric_names]
    return [*names, *(["val_" + n for n in names] if validation else [])]


def quantities(columns: Iterable[str]) -> list[str]:
    """The quantities of a history (`loss`, each metric), each once, loss first: what gets a panel."""
    columns = list(columns)
    bookkeeping = {*COUNT_COLUMNS, *TIMING_COLUMNS}
    names = [c for c in columns if not c.startswith("val_") and c not in bookkeeping]
    names += [c[4:] for c in columns if c.startswith("val_") and c[4:] not in names]
    return sorted(names, key=lambda n: n != "loss")


class History:
    """Rows of `{"epoch": 1, "loss": ..., "accuracy": ..., "val_loss": ..., ...}`."""

    def __init__(self, rows=None):
        self.rows: list[dict] = [dict(r) for r in rows or []]

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self):
        import pandas as pd  # imported here: `import train` stays as fast as `import accelerate`

        return pd.DataFrame(self.rows)

    def to_csv(self, path: str | Path) -> None:
        """Write the history as CSV atomically: a reader never sees half a file. Written with the
        csv module (what pandas writes for these rows, without importing pandas: a script run
        never needs it), floats in their shortest exact form."""
        import csv

        columns = list(dict.fromkeys(c for row in self.rows for c in row))

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(path, write)


def check_column(column: str, columns: list[str], option: str) -> str:
    if column not in columns:
        from train.base.errors import ConfigError
        from train.base.text import did_you_mean

        hint = did_you_mean(column, columns, otherwise=f"choose from {', '.join(columns)}")

        raise ConfigError(f"{option} is '{column}', which is not a history column; {hint}")
    return column
