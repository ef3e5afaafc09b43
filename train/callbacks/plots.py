"""`history.png`: one panel per quantity (loss, then each metric), train against validation per epoch.

Drawing happens in a helper process (`python -m train.plots`, started by `start_helper` as early
as the front can: the script does it before importing torch): it imports matplotlib on another
core while the run starts and trains, and a drawing never holds up a step. A training process
forked from the supervisor's warm template forks it instead, matplotlib imported already.
The run sends it the history after an epoch (at most every `every_s` seconds) and at the end, then
waits for the last drawing. Should the helper be unable to start, the run draws in-process. This
module imports no torch, so the helper starts in a fraction of a second.
"""

from __future__ import annotations

import atexit
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


def serve(requests=None, answers=None) -> None:
    """The helper: one JSON request per line on `requests` (stdin) ({"rows": [...], "path": ...}),
    drawn in order, each answered by one line on `answers` (stdout) ({"drawn": path} or {"failed":
    reason}) once the file is in place; ends at {"quit": true} or at end of input. (The run sends
    the quit rather than relying on end of input: loader workers forked from the run inherit the
    pipe and would keep it open.) A terminal's Ctrl-C is the run's to handle, not the helper's: it
    is ignored here."""
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
    answers = answers or sys.stdout
    sys.stdout = sys.stderr  # nothing but the answers on the pipe
    for line in requests or sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            return
        try:
            plot_history(request["rows"], request["path"])
            answer = {"drawn": request["path"]}
        except Exception as e:  # the run says so and goes on; a missing plot fails no run
            answer = {"failed": f"{type(e).__name__}: {e}"}
        try:
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
        except BrokenPipeError:  # the run is gone (a second Ctrl-C, a kill): nobody to answer
            os._exit(0)  # at once: the interpreter's last flush would meet the same closed pipe


class Helper:
    """The drawing helper process and its two pipes. One per process, kept between runs (a
    notebook's second `fit`, a search's next trial): matplotlib's import, about a second, is paid
    once. Ended at the process's exit (`stop_helper`)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.unanswered, self.buffer = process, 0, b""

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: dict) -> bool:
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError:  # it is gone
            return False
        self.unanswered += 1
        return True

    def answers(self, timeout: float) -> list[dict] | None:
        """Every answer still owed (a list), or None when the helper ended or took longer than
        `timeout` seconds. A hand-made reader: a deadline on a pipe needs select, which Python's
        buffered readers do not mix with."""
        import select

        got, deadline, fd = [], time.monotonic() + timeout, self.process.stdout.fileno()
        while self.unanswered:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                got.append(json.loads(line))
                self.unanswered -= 1
            if not self.unanswered:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # it ended
                return None
            self.buffer += chunk
        return got

    def stop(self, timeout: float = 10) -> None:
        try:
            self.process.stdin.write(b'{"quit": true}\n')
            self.process.stdin.close()
        except OSError:  # it is gone already
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # wedged
            self.process.kill()


_helper: Helper | None = None


def start_helper(fork: bool = False) -> Helper | None:
    """This process's drawing helper (started once, on the main process only; a new one should
    the last have ended), or None when none can start (the run then draws in-process). `fork`:
    this process may fork it now (the script's first act, before any tensor operation)."""
    global _helper
    if _helper is not None and not _helper.alive():
        _helper = None
    if _helper is None and os.environ.get("RANK", "0") == "0":
        try:
            process = (fork and _forked()) or subprocess.Popen(
                [sys.executable, "-m", "train.plots"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                start_new_session=True,  # out of the terminal's Ctrl-C
                env={k: v for k, v in os.environ.items() if k != "TRAIN_SUPERVISOR_DIR"}, cwd=ROOT)
        except OSError:
            return None
        _helper = Helper(process)
        atexit.register(stop_helper)
    return _helper


# what a process forked from the supervisor's warm template holds already (it imported them)
DRAWING_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")


def _forked():
    """The helper forked from this process when matplotlib is imported already and forking is
    safe (a training process forked from the warm template, which imported it): a restart's helper
    then starts in a millisecond instead of importing matplotlib again, on cores the restarting
    processes need. Else None (the helper is a fresh `python -m train.plots`)."""
    from train.base import forked

    if not forked.from_template or not all(name in sys.modules for name in DRAWING_MODULES) or \
            forked.unsafe_to_fork():
        return None
    try:
        return forked.fork_helper(serve, "train-plots")
    except OSError:
        return None


def stop_helper() -> None:
    """End this process's helper (at exit; the script front calls it before its `os._exit`)."""
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        helper.stop()


def _give_up_on(helper: Helper) -> None:
    global _helper
    if _helper is helper:
        _helper = None
    helper.process.kill()


class HistoryPlot(Callback):
    """Redraws `history.png` after an epoch when the last drawing is `every_s` seconds old, and at
    the end, where it waits for the drawing (main process only)."""

    def __init__(self, path: str | Path, every_s: float = 10.0):
        self.path, self.every_s = Path(path).absolute(), every_s  # the helper may work in another folder
        self.sent_at, self.sent_epochs = None, 0
        self.helper = None

    def on_train_begin(self, run):
        if run.is_main_process:
            self.helper = start_helper()

    def _draw(self, rows):
        self.sent_at, self.sent_epochs = time.monotonic(), len(rows)
        if self.helper is not None and self.helper.send({"rows": rows, "path": str(self.path)}):
            return
        self.helper = None
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
        helper, self.helper = self.helper, None
        if helper is None:
            return
        answers = helper.answers(timeout=120)
        if answers is None:  # it ended or is wedged
            _give_up_on(helper)
        if not rows or (answers and "drawn" in answers[-1]):
            return
        try:
            plot_history(rows, self.path)
        except Exception as e:  # a missing plot must not fail a finished run
            print(f"note: could not draw {self.path} ({type(e).__name__}: {e})", flush=True)
