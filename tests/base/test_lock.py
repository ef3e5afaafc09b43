"""The output folder's lock: a lock from another host blocks while its heartbeat is fresh."""

import json
import os
import time
import pytest


def test_a_lock_from_another_host_blocks_while_its_heartbeat_is_fresh(tmp_path):
    from train.base.lock import STALE_S, FolderInUse, OutputLock

    (tmp_path / ".lock").write_text(json.dumps({"host": "node-3", "pid": 1234, "since": "12:04"}))
    with pytest.raises(FolderInUse, match=r"in use by pid 1234 on node-3 since 12:04"):
        OutputLock(tmp_path).acquire()
    stale = time.time() - STALE_S - 1  # node-3 died: no heartbeat for a minute
    os.utime(tmp_path / ".lock", (stale, stale))
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(FolderInUse, match=rf"in use by pid {os.getpid()}"):  # this host: the flock says so
        OutputLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.slow  # starts a process
def test_a_killed_holders_forked_child_delays_the_lock_but_does_not_keep_it(tmp_path):
    """A killed rank's data-loader worker shares the lock's open file (fork) until it sees its parent
    gone: the restarted run waits for it instead of stopping with "in use" (a CI failure)."""
    import subprocess
    import sys

    from conftest import ROOT
    from train.base.lock import OutputLock

    script = (f"import os, sys, time\nsys.path.insert(0, {str(ROOT)!r})\nfrom train.base.lock import OutputLock\n"
              "OutputLock(sys.argv[1]).acquire()\n"
              "if os.fork() == 0:  # the worker: the lock's file open, for 3 s\n"
              "    time.sleep(3)\n    os._exit(0)\n"
              "os._exit(0)  # the holder gone at once\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    start = time.monotonic()
    lock = OutputLock(tmp_path)
    lock.acquire()  # refused with "in use" before
    assert time.monotonic() - start > 1  # it did wait for the child
    lock.release()
