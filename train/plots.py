"""`history.png`: one panel per quantity (loss, then each metric), train against validation per epoch."""

from __future__ import annotations

import time
from pathlib import Path

from .callbacks import Callback
from .files import atomic_write
from .history import quantities


def plot_history(frame, path: str | Path) -> int:
    """Write the figure to `path` (atomically); returns the number of panels."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    names = quantities(frame.columns)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], names):
        for column, label, style in ((name, "train", "o-"), (f"val_{name}", "validation", "s--")):
            if column in frame:
                ax.plot(frame["epoch"], frame[column], style, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return len(names)


class HistoryPlot(Callback):
    """Redraws `history.png` after an epoch when the last drawing is `every_s` seconds old, and
    at the end (main process only): a drawing costs ~0.3 s, more than a short epoch."""

    def __init__(self, path: str | Path, every_s: float = 10.0):
        self.path, self.every_s = Path(path), every_s
        self.drawn_at, self.drawn_epochs = None, 0

    def _draw(self):
        plot_history(self.loop.history.frame(), self.path)
        self.drawn_at, self.drawn_epochs = time.monotonic(), len(self.loop.history)

    def on_epoch_end(self, epoch, row):
        if self.loop.is_main_process and (self.drawn_at is None or time.monotonic() - self.drawn_at >= self.every_s):
            self._draw()

    def on_train_end(self):
        if self.loop.is_main_process and len(self.loop.history) and self.drawn_epochs != len(self.loop.history):
            self._draw()
