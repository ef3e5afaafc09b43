"""One run per output folder: a lock file that a live run holds and a dead one gives up.

`<output_dir>/.lock` names its holder (host, pid, start time). On the holder's host the kernel
arbitrates: the holder keeps an `fcntl.flock` on the file, which a killed process drops at once.
Across hosts (a shared file system, where flock may not be shared) the holder refreshes the
file's modification time every `HEARTBEAT_S` seconds from a background thread; a lock from
another host that has not been refreshed for `STALE_S` seconds belongs to a dead node and is taken
over. So a second submission of the same job stops with one line, while a requeued job whose
predecessor was killed starts at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from train.base.errors import UserError

LOCK_FILE = ".lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0
ORPHAN_WAIT_S = 30.0


def _dead_here(holder: dict) -> bool:
    """Whether the lock's recorded holder is a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class FolderInUse(UserError):
    pass


class OutputLock:
    def __init__(self, folder: str | Path, name: str = LOCK_FILE):
        self.path = Path(folder) / name
        self.fd = None
        self._stop = threading.Event()

    def acquire(self) -> None:
        """Take the lock (creating the folder), or raise `FolderInUse` naming the live holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._open_locked()
        except OSError as e:
            raise UserError(f"output_dir '{self.path.parent}' is not writable ({e.strerror}); set output_dir=DIR "
                            f"to a folder you can write") from None
        try:
            holder = self._holder()
            here = socket.gethostname()
            if holder and holder.get("host") != here and time.time() - os.fstat(fd).st_mtime < STALE_S:
                raise FolderInUse(self._in_use(holder))  # a live run on another host: its heartbeat says so
            me = {"host": here, "pid": os.getpid(), "since": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        threading.Thread(target=self._heartbeat, name="output-lock-heartbeat", daemon=True).start()

    def _open_locked(self) -> int:
        """The lock file, opened and flocked (FolderInUse if a live process here holds it). A holder
        that is dead while its lock is still held left a child with the lock's file open (a fork
        shares it: a killed rank's data-loader worker, which ends within seconds once it sees its
        parent gone): waited for, up to `ORPHAN_WAIT_S`."""
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for any file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                holder = self._holder()
                if _dead_here(holder) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise FolderInUse(self._in_use(holder)) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd  # still the file at that path (its holder did not remove it meanwhile)
            except FileNotFoundError:
                pass
            os.close(fd)

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _in_use(self, holder: dict) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
               if holder else "another process")
        return (f"output_dir {self.path.parent} is in use by {who}; wait for it to end, or pick another "
                f"output_dir")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        self._stop.set()
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None
