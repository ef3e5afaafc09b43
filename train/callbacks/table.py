"""The epoch table: one aligned row per epoch within 100 columns (main process only)."""

from __future__ import annotations

from train.base.text import WIDTH
from train.engine.events import Callback

# how the table shows each column (every column stays in history.csv): header, format
SHOWN = {"epoch": ("epoch", "{:d}"), "lr": ("lr", "{:.3g}"), "skipped_steps": ("skipped", "{:d}"),
         "epoch_s": ("time", "{:.1f}s"), "samples_per_s": ("samples/s", "{:,.0f}")}
TIMING_SHOWN = ("epoch_s", "samples_per_s")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if (abs(value) >= 1e4 or (value and abs(value) < 1e-3)) else f"{value:.4f}"
    return str(value)


class EpochTable(Callback):
    """Prints one row per epoch as an aligned table within 100 columns (main process only): the
    quantities, lr and, where they fit, the epoch's time and samples/s."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self.columns = None

    def _choose(self, row) -> list[tuple[str, str, int]]:
        from train.engine.history import TIMING_COLUMNS

        names = [c for c in row if c not in TIMING_COLUMNS or c in TIMING_SHOWN]
        for drop_timing in (False, True):
            chosen = [c for c in names if not (drop_timing and c in TIMING_COLUMNS)]
            columns = [(c, SHOWN.get(c, (c, None))[0], 0) for c in chosen]
            columns = [(c, h, max(len(h), 8 if c != "epoch" else 5)) for c, h, _ in columns]
            if sum(w for *_, w in columns) + 2 * (len(columns) - 1) <= WIDTH:
                return columns
        return []  # too many columns for one line: rows as wrapped name=value pairs

    def _cell(self, column, value) -> str:
        fmt = SHOWN.get(column, (None, None))[1]
        try:
            return fmt.format(value) if fmt else _fmt(value)
        except (ValueError, TypeError):
            return _fmt(value)

    def on_epoch_end(self, row, run):
        if not run.is_main_process:
            return
        if self.columns is None:
            self.columns = self._choose(row)
            if self.columns:
                self.print("  ".join(h.rjust(w) for _, h, w in self.columns), flush=True)
        if self.columns:
            self.print("  ".join(self._cell(c, row.get(c, "")).rjust(w) for c, _, w in self.columns), flush=True)
        else:
            from train.base.text import wrapped

            pairs = " ".join(f"{k}={self._cell(k, v)}" for k, v in row.items())
            self.print(wrapped(pairs), flush=True)
