"""The epoch history: one row per epoch, the same on every process, as a pandas DataFrame."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write

# columns that differ between two runs of the same computation
TIMING_COLUMNS = ("epoch_s", "data_s", "compute_s", "samples_per_s", "flops_per_s")


class History:
    """Rows of `{"epoch": 1, "loss": ..., "accuracy": ..., "val_loss": ..., ...}`."""

    def __init__(self, rows=None):
        self.rows: list[dict] = list(rows or [])

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self):
        import pandas as pd  # imported here: `import train` stays as fast as `import accelerate`

        return pd.DataFrame(self.rows)

    def to_csv(self, path: str | Path) -> None:
        """Write the history as CSV atomically: a reader never sees half a file."""
        frame = self.frame()
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
