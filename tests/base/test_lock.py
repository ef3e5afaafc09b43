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
