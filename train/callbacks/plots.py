"""`history.png`: one panel per quantity (loss, then each metric), train against validation per epoch.

Drawing happens in a helper process (`python -m train.plots`, started by `start_helper` as early
as the front can: the script does it before importing torch): it imports matplotlib on another
core while the run starts and trains, and a drawing never holds up a step.
The run sends it the history after an epoch (at most every `every_s` seconds) and at the end, then
waits for the last drawing. Should the helper be unable to start, the run draws in-process. This
module imports no torch, so the helper starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from train.engine.events import Callback
from train.base.files import atomic_write
from train.engine.history import quantities
from train.base.paths import ROOT


def plot_history(rows: list[dict], path: str | Path) -> int:
    """Draw the history `rows` (one dict per epoch) to `path` (atomically); returns the number of
    panels. Uses matplotlib's object API with the Agg canvas, not pyplot: no figure manager and
    no display."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    names = quantities(columns)
    fig, axes = _figure(len(names))
    epochs = [row["epoch"] for row in rows]
    for ax, name in zip(axes, names):
        for column, label, style in ((name, "train", "o-"), (f"val_{name}", "validation", "s--")):
            if column in columns:
                ax.plot(epochs, [row.get(column, float("nan")) for row in rows], style, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return len(names)


def _figure(panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * panels, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def plot_sweep(trials: list[dict], params: list[tuple[str, bool]], objective: str, mode: str, path) -> None:
    """`sweep.png`: the objective of each trial with the best so far, then the objective against
    each parameter (`params`: (name, drawn on a log scale)). `trials`: dicts with number, state,
    objective (a pruned trial's last reported value) and the parameters."""
    fig, axes = _figure(1 + len(params))
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["objective"] is not None]
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["objective"] is not None]
    better = max if mode == "max" else min
    for ax, x_of, name, log in [(axes[0], lambda t: t["number"], "trial", False)] + \
            [(ax, (lambda t, k=k: t[k]), k, log) for ax, (k, log) in zip(axes[1:], params)]:
        ax.plot([x_of(t) for t in complete], [t["objective"] for t in complete], "o", label="complete")
        if pruned:
            ax.plot([x_of(t) for t in pruned], [t["objective"] for t in pruned], "x", color="grey",
                    label="pruned (last epoch reported)")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    if complete:
        best, xs, ys = None, [], []
        for t in sorted(complete, key=lambda t: t["number"]):
            best = t["objective"] if best is None else better(best, t["objective"])
            xs.append(t["number"])
            ys.append(best)
        xs.append(max(t["number"] for t in trials))  # the best so far holds to the last trial
        ys.append(best)
        axes[0].step(xs, ys, where="post", label="best so far")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_title(f"{objective} per trial")
    axes[0].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_lr_find(lrs: list[float], losses: list[float], smoothed: list[float], suggestion, path) -> None:
    """`lr_find.png`: the loss against the learning rate (log scale), raw and smoothed, and the suggestion."""
    fig, (ax,) = _figure(1)
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed")
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.3g}")
    finite = [v for v in smoothed if v == v and v != float("inf")]
    raw = [v for v in losses if v == v and v != float("inf")]
    if finite:  # the diverging end would squash the curve that matters; the raw loss's low points stay in view
        low = min(finite + raw)
        ax.set_ylim(low - 0.05 * abs(low), max(2 * finite[0], min(finite) * 1.5))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def serve() -> None:
    """The helper: one JSON request per line on stdin ({"rows": [...], "path": ...}), drawn in
    order; ends at {"quit": true} or at end of input. (Not at end of input alone: loader workers
    forked from the run inherit the pipe and would keep it open.) A terminal's Ctrl-C is the run's
    to handle, not the helper's: it is ignored here."""
    import io
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    warm = Figure(figsize=(2, 2))  # fonts and code paths loaded now, while the run starts
    FigureCanvasAgg(warm)
    ax = warm.subplots()
    ax.plot([1, 2], [1, 2], "o-", label="x")
    ax.legend()
    warm.tight_layout()
    warm.savefig(io.BytesIO(), format="png")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            return
        plot_history(request["rows"], request["path"])


_helper = None


def start_helper():
    """Start the drawing helper of this process (once; on the main process only) and return it."""
    global _helper
    if _helper is None and os.environ.get("RANK", "0") == "0":
        try:
            _helper = subprocess.Popen([sys.executable, "-m", "train.plots"], stdin=subprocess.PIPE, text=True,
                                       start_new_session=True,  # out of the terminal's Ctrl-C
                                       env={k: v for k, v in os.environ.items() if k != "TRAIN_SUPERVISOR_DIR"},
                                       cwd=ROOT)
        except OSError:  # no helper: the run draws in-process
            _helper = None
    return _helper


def _stop_helper():
    global _helper
    helper, _helper = _helper, None
    if helper is None:
        return True
    try:
        helper.stdin.write('{"quit": true}\n')
        helper.stdin.close()
    except OSError:  # it is gone already
        pass
    try:
        return helper.wait(timeout=120) == 0
    except subprocess.TimeoutExpired:  # wedged: the caller draws in-process
        helper.kill()
        return False


class HistoryPlot(Callback):
    """Redraws `history.png` after an epoch when the last drawing is `every_s` seconds old, and at
    the end (main process only)."""

    def __init__(self, path: str | Path, every_s: float = 10.0):
        self.path, self.every_s = Path(path), every_s
        self.sent_at, self.sent_epochs = None, 0
        self.helper = None

    def on_train_begin(self, run):
        if run.is_main_process:
            self.helper = start_helper()

    def _draw(self, rows):
        self.sent_at, self.sent_epochs = time.monotonic(), len(rows)
        if self.helper is not None and self.helper.poll() is None:
            try:
                self.helper.stdin.write(json.dumps({"rows": rows, "path": str(self.path)}) + "\n")
                self.helper.stdin.flush()
                return
            except OSError:
                pass
        plot_history(rows, self.path)

    def on_epoch_end(self, run):
        if run.is_main_process and (self.sent_at is None or time.monotonic() - self.sent_at >= self.every_s):
            self._draw(run.history.rows)

    def on_train_end(self, run):
        if not run.is_main_process:
            return
        rows = run.history.rows
        if rows and self.sent_epochs != len(rows):
            self._draw(rows)
        if self.helper is not None:
            self.helper = None
            if not _stop_helper() and rows:  # it failed: draw here
                try:
                    plot_history(rows, self.path)
                except Exception as e:  # a missing plot must not fail a finished run
                    print(f"note: could not draw {self.path} ({type(e).__name__}: {e})", flush=True)
