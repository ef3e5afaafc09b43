"""A stalled job: a training process stopped too long is seen (`StoppedWatch`), the stalled
are named with where they were (`words`), and their Python stacks are kept before the job is ended:
each live training process is asked
for its stacks (`reports.STACK_SIGNAL`, answered by `faulthandler` in C, also inside a collective);
a stopped process is continued so that it can answer (it is ended right after). The answers go into
one file in the run's folder, `stacks/attempt-N.txt`, a section per process. Only the standard
library: the supervisor imports this."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from train.base.files import atomic_write_text
from train.supervision.reports import STACK_SIGNAL, alive, state


class StoppedWatch:
    """Which training processes have been stopped (SIGSTOP; state T) for at least `after` s: the
    others would wait for them in a collective until it timed out (30 minutes by default)."""

    def __init__(self, after: float):
        self.after, self.since = after, {}

    def stalled(self, records: list[dict]) -> list[dict]:
        now = time.monotonic()
        for r in records:
            if r.get("code") is None and state(r["pid"]) == "T":
                self.since.setdefault(r["pid"], now)
            else:
                self.since.pop(r["pid"], None)
        return [r for r in records if now - self.since.get(r["pid"], now) >= self.after]


def words(record: dict, idle, stopped: bool) -> str:
    """`pid 1234 made no progress for 12 s at epoch 2 batch 31 (stopped)`; `idle`: (seconds since
    its last beat, epoch, batch), or None before its first."""
    where = f" for {idle[0]:.0f} s at epoch {idle[1]} batch {idle[2]}" if idle else " since it started"
    return f"pid {record['pid']} made no progress{where}" + (" (stopped)" if stopped else "")


def collect(records: list[dict], folder: Path, output_dir: str | None, attempt: int, words: dict,
            wait_s: float = 3.0) -> str | None:
    """Ask every live process of `records` for its stacks, wait for the answers (at most `wait_s`),
    and write them to `<output_dir>/stacks/attempt-<attempt>.txt`; returns that path, or None when
    there is no folder or no live process. `words`: a line per rank to head its section."""
    live = [r for r in records if alive(r["pid"])]
    if not live or not output_dir:
        return None
    files = {r["pid"]: folder / f"rank-{r['rank']}.stack" for r in live}
    sizes = {pid: _size(path) for pid, path in files.items()}
    for r in live:
        stopped = state(r["pid"]) == "T"
        try:
            os.kill(r["pid"], STACK_SIGNAL)
            if stopped:  # the handler runs once it is continued
                os.kill(r["pid"], signal.SIGCONT)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_size(path) <= sizes[pid] for pid, path in files.items()):
        time.sleep(0.05)
    time.sleep(0.1)  # the last lines of an answer being written
    sections = []
    for r in live:
        text = _read(files[r["pid"]])[sizes[r["pid"]]:]
        head = f"rank {r['rank']}: {words[r['rank']]}" if r["rank"] in words else f"rank {r['rank']} (pid {r['pid']})"
        sections.append(f"== {head}\n{text.strip() or '(no answer: it did not run its handler in time)'}\n")
    path = Path(output_dir) / "stacks" / f"attempt-{attempt}.txt"
    try:
        atomic_write_text(path, "\n".join(sections))
    except OSError:
        return None
    return str(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
