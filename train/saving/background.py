"""Checkpoints written in the background (`checkpoint.async: true`): the step waits only while the
state is staged, then training goes on while it reaches the disk.

Staging is the checkpoint's ordinary save (`Checkpoint._write`: Accelerate's `save_state`, DCP
shards included, and the loop's files) into node-local memory (`/dev/shm`, else the temporary
folder): one code path and one format for both ways of saving. A thread of each process then copies
the files that process wrote (the same ownership as `fsync_own_files`: the main process the shared
files, each process its RNG states, sums and shards) into the checkpoint's `.tmp-` folder on disk,
fsyncs them, reads each back against the CRC-32 of the staged bytes, and leaves a marker holding
those; the main process's thread waits for every process's marker, and only then writes the
manifest from them, renames the folder into place and moves `latest` (`commit`). A kill
or a full disk during the write leaves the previous `latest`. Written by hand because no library
stages and commits a checkpoint of files this way (DCP's `async_save` covers its own shards only).

At most one write is in flight: the next save, the end of training and a stop signal's save wait
for it first (a failed write then ends the run with exit 74 on every process, as a failed save does).
Each staged file is removed once copied, and the folder at the next wait, so memory holds at most
one checkpoint per node.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from train.base.paths import node_memory
from train.engine.devices import all_ok

DONE, FAILED = ".done-", ".failed-"  # a process's marker in the checkpoint's .tmp- folder


def staging_root() -> Path:
    """Where checkpoints are staged: this node's memory (`train.base.paths.node_memory`)."""
    return node_memory()


def checkpoint_size(last_saved: Optional[Path], model) -> int:
    """Bytes of a checkpoint: the last one saved, or before the first, the weights and two moments of
    Adam (the whole model's: a sharded model's parts are DTensors of the whole shape)."""
    if last_saved is not None and last_saved.is_dir():
        return sum(p.stat().st_size for p in last_saved.rglob("*") if p.is_file())
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def staging_folder(root: Path, name: str) -> Path:
    """This node's memory folder for the checkpoint `name` of the checkpoints folder `root`."""
    tag = zlib.crc32(str(Path(root).resolve()).encode())
    return staging_root() / f"train-staged-{tag:08x}-{name}"


def room_to_stage(acc, size: int, memory: Optional[Path], said: bool) -> bool:
    """Whether every node's memory has room for a staged copy of the next checkpoint (`size`: as big
    as the last, or before the first, the weights and two moments of Adam); if not, that save is
    written directly (a container's /dev/shm is often 64 MB), said unless `said`. `memory`: room for
    a memory checkpoint (two: the newest and the one being written), else none is written from here
    on (said)."""
    folder = staging_root()
    try:  # TRAIN_STAGING_DIR may name a folder yet to be made
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError:  # not writable: no room
        free = 0
    room = all_ok(acc, free > (2.2 if memory is not None else 1.2) * size)
    if not room and acc.is_main_process and (memory is not None or not said):
        print(f"note: checkpoint.memory_every_steps: {free / 2**20:.0f} MB free in {memory.parent}, less than two "
              f"checkpoints ({2 * size / 2**20:.0f} MB): disk checkpoints only" if memory is not None else
              f"note: checkpoint.async_save: {free / 2**20:.0f} MB free in {folder} on some node, less than a "
              f"checkpoint ({size / 2**20:.0f} MB): writing checkpoints directly", flush=True)
    return room


@contextmanager
def quick_serialization():
    """`torch.save` without its per-record CRC-32 while staging (60% of its time): the manifest's own
    CRC-32 of each file on disk, which every load verifies, is the check that counts."""
    import torch.utils.serialization as serialization

    was = serialization.config.save.compute_crc32
    serialization.config.save.compute_crc32 = False
    try:
        yield
    finally:
        serialization.config.save.compute_crc32 = was


def remove_stale(root: Path) -> None:
    """Staged copies a killed run of the checkpoints folder `root` left in this node's memory."""
    for stale in staging_root().glob(staging_folder(root, "*").name):
        shutil.rmtree(stale, ignore_errors=True)


def own_files(folder: Path, index: int, main: bool) -> list[Path]:
    """The files process `index` wrote into a staged checkpoint (the main process: also every file no
    process owns by name)."""
    from train.saving.storage import owner_of

    return [p for p in sorted(folder.rglob("*")) if p.is_file()
            and (owner_of(p.name) == index or (main and owner_of(p.name) is None))]


class BackgroundWrite:
    """One checkpoint on its way from memory to disk (see the module docstring)."""

    def __init__(self, staged: Path, tmp: Path, index: int, processes: int, main: bool,
                 commit: Callable[[dict], None], timeout_s: float):
        self.staged, self.tmp, self.index, self.processes, self.main = staged, tmp, index, processes, main
        self.commit, self.timeout_s = commit, timeout_s
        self.error: Optional[str] = None
        self.thread = threading.Thread(target=self._run, name="checkpoint-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._copy()
        except Exception as e:  # the disk's error, for the line the run ends with
            self.error = _reason(e, self.tmp)
            _mark(self.tmp / f"{FAILED}{self.index}", self.error)
        if self.main and self.error is None:
            try:
                self._wait_and_commit()
            except Exception as e:
                self.error = _reason(e, self.tmp)
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _copy(self) -> None:
        """Each of this process's staged files to disk, fsynced and read back: its CRC-32 on disk must
        be the staged bytes' (torch.save's own CRC was left out while staging); the sizes and CRCs go
        in the marker, for the manifest."""
        from train.saving.storage import file_crc32

        checked = {}
        for source in own_files(self.staged, self.index, self.main):
            name = source.relative_to(self.staged).as_posix()
            target = self.tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            crc = 0
            with open(source, "rb") as src, open(target, "wb") as dst:
                while block := src.read(1 << 20):
                    crc = zlib.crc32(block, crc)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            if file_crc32(target) != crc:
                raise OSError(f"{name} reads back other bytes than were written")
            checked[name] = {"size": target.stat().st_size, "crc32": crc}
            source.unlink()  # memory given back file by file (the folder goes at the next wait)
        _mark(self.tmp / f"{DONE}{self.index}", json.dumps(checked))

    def _wait_and_commit(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            failed = sorted(self.tmp.glob(f"{FAILED}*"))
            if failed:
                raise OSError(f"process {failed[0].name[len(FAILED):]}: {failed[0].read_text().strip()}")
            if len(list(self.tmp.glob(f"{DONE}*"))) == self.processes:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the other processes did not finish writing within {self.timeout_s:.0f} s")
            time.sleep(0.01)
        checked = {}
        for marker in self.tmp.glob(f"{DONE}*"):
            checked.update(json.loads(marker.read_text() or "{}"))
            marker.unlink()
        self.commit(checked)

    def wait(self) -> Optional[str]:
        """Block until this write has finished; its error (this process's), or None."""
        self.thread.join()
        return self.error


def _mark(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass  # a full disk: the main process's thread times out on the missing marker


def _reason(error: BaseException, folder: Path) -> str:
    from train.saving.storage import why_save_failed

    return why_save_failed(error, folder)
