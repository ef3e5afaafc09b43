"""The stop signals: SIGUSR1, SIGTERM and Ctrl-C turned into a checkpoint and an exit code."""

from __future__ import annotations

from train.engine.events import Callback


class StopSignals(Callback):
    """Turns SIGUSR1 and SIGTERM (what SLURM and most schedulers send before they stop a job) and
    SIGINT (Ctrl-C) into a request the loop acts on at its next status check: all processes agree,
    a checkpoint is saved, and the run ends with `Preempted` (exit 75) or `Interrupted` (exit 130).
    The handler only assigns a number: no I/O or locks inside a signal handler. A second Ctrl-C
    ends the process at once (exit 130), without saving: the last complete checkpoint stays
    `latest`, since a save only moves `latest` once it is whole."""

    SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")

    def __init__(self, print_fn=None):
        import sys

        self.print = print_fn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.previous = {}
        self.interrupts = 0

    def install(self, request_stop) -> None:
        """Catch the signals now, passing each to `request_stop(signum)` (the loop's; the run calls
        this before anything slow, so that a signal during start-up is not lost: the loop acts on
        it at its first optimizer step)."""
        import signal
        import threading

        self.request_stop = request_stop
        if self.previous or threading.current_thread() is not threading.main_thread():
            return  # installed already; or not the main thread (Python runs handlers in it only)
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        import os
        import signal

        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                os.write(2, b"\ninterrupted again: stopping now, without saving; the last complete checkpoint "
                            b"stays latest\n")
                os._exit(130)
        self.request_stop(signum)

    def on_interrupt(self, epoch, batch, run):
        if run.stop_signal == "SIGINT" and run.is_main_process:
            self.print(f"interrupted at epoch {epoch} batch {batch}: saving a checkpoint; run the same command "
                       f"to resume")

    def on_train_end(self):
        self.restore()

    def restore(self):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
