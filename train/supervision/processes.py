"""The processes below the supervisor: a process's children and whole tree (read from /proc),
ending them, waiting until they are gone. Only the standard library: the supervisor imports this."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from train.supervision.reports import alive


def children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def gone(pids: list[int], wait_s: float = 5.0) -> None:
    """Wait (at most `wait_s`) until the killed processes are gone, their ports free."""
    deadline = time.monotonic() + wait_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass
