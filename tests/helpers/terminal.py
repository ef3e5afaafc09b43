"""A program run on a pseudo-terminal, sent Ctrl-C as a terminal sends it (for the tests)."""

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def under_a_terminal(cmd, when, columns=100, timeout=300, cwd=ROOT):
    """Run `cmd` on a pseudo-terminal in a new session; once the screen satisfies `when`, send
    SIGINT to its process group, as a terminal's Ctrl-C does. Returns (exit code, screen)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = dict(os.environ, PATH=f"{VENV}/bin:{os.environ['PATH']}")
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=follower, stdout=follower, stderr=follower, env=env,
                            start_new_session=True)
    os.close(follower)
    chunks, sent, deadline = [], False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.05)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every process let go of the terminal
                break
            if not data:
                break
            chunks.append(data)
        if not sent and when(b"".join(chunks).decode(errors="replace")):
            os.killpg(proc.pid, signal.SIGINT)
            sent = True
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")
