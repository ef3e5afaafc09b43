"""What a launcher prints, sorted: the training processes' lines pass, the launcher's own are held.

Accelerate's multi-process launcher (torchrun inside) logs through torch.distributed's loggers and
ends every failed job with a Python traceback of `ChildFailedError` and an error report, although
the failed process has already said why in one line. The supervisor relays the launcher's output
through `LauncherFilter`, which holds those back and reads the exit codes torchrun reports. Only
the standard library is used.
"""

from __future__ import annotations

import re
import threading


class LauncherFilter:
    """Relays a launcher's merged output line by line, holding back the launcher's own lines:
    torch.distributed's log lines and, from the launcher's traceback on, everything (the ranks
    are gone by then). Parses torchrun's 'failed (exitcode: -9) local_rank: 1 (pid: 123)'."""

    ELASTIC = re.compile(r"^[IWE]\d{4} [\d:.]+ +\d+ .*torch/distributed/")
    FAILED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
    LAUNCHER_FRAME = re.compile(r'File ".*(/bin/accelerate|/bin/torchrun|accelerate/commands/|torch/distributed/run)')

    def __init__(self):
        self.held: list[str] = []
        self.exit_codes: dict[int, int] = {}  # pid -> exit code, as torchrun saw it
        self.local_ranks: dict[int, int] = {}  # pid -> local rank, for a process that died before it said its rank
        self.pending: dict[int, str] = {}  # per stream: a traceback's first line, until its first frame says whose
        self.swallow = False
        self.lock = threading.Lock()

    def relay(self, stream, out) -> threading.Thread:
        """Relay `stream` to `out` in a thread of its own (one per pipe, so that neither fills up).
        It drains the pipe to the end whatever happens to `out` (a closed `| head`): a full pipe
        would block the processes writing to it."""
        def run():
            for line in iter(stream.readline, ""):
                with self.lock:
                    for shown in self._line(id(out), line):
                        try:
                            out.write(shown)
                            out.flush()
                        except (OSError, ValueError):
                            pass
            stream.close()  # at its end: the relay owns the pipe

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def _line(self, key: int, line: str) -> list[str]:
        if self.swallow or self.ELASTIC.match(line):
            match = self.FAILED.search(line)
            if match:
                self.exit_codes[int(match.group(3))] = int(match.group(1))
                self.local_ranks[int(match.group(3))] = int(match.group(2))
            self.held.append(line)
            return []
        if line.startswith("Traceback (most recent call last):"):
            self.pending[key] = line
            return []
        first = self.pending.pop(key, None)
        if first is not None:
            if self.LAUNCHER_FRAME.search(line):
                self.swallow = True
                self.held.extend([first, line])
                return []
            return [first, line]
        return [line]
