"""`history.png`: one panel per quantity (loss, then each metric), train against validation per epoch."""

from __future__ import annotations

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
    """Redraws `history.png` after each epoch (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, epoch, row):
        if self.loop.is_main_process:
            plot_history(self.loop.history.frame(), self.path)
