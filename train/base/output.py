"""Output that outlives its reader. Under the supervisor a training process writes into a pipe the
supervisor reads; if the supervisor dies (SIGKILL, an OOM kill), the processes below it get SIGTERM
and save a checkpoint on their way out, and their next line would raise `BrokenPipeError` in the
middle of that save. Python has no setting for "drop output whose reader is gone" (SIGPIPE is
ignored and surfaces as the exception), so the standard streams are wrapped by hand: after the
first broken pipe the stream's descriptor points at /dev/null, for Python's writes, C's and the
interpreter's last flush alike. Standard library only (it runs at `import train`)."""

from __future__ import annotations

import io
import os
import sys


class _OutlivesItsReader:
    """A text stream whose writes and flushes, once the reader has gone, go to /dev/null instead of
    raising; everything else is the stream's own."""

    def __init__(self, stream: io.TextIOWrapper):
        self._stream = stream

    def _reader_gone(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()
            self._stream.flush()  # what was buffered goes to /dev/null now

    def __getattr__(self, name):
        return getattr(self._stream, name)


def outlive_the_reader() -> None:
    """Wrap `sys.stdout` and `sys.stderr` where they are plain file streams (a notebook's streams,
    or ones a user replaced, are left alone)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if type(stream) is io.TextIOWrapper:
            setattr(sys, name, _OutlivesItsReader(stream))
