"""Checkpoints: atomic, verifiable saves of everything a run needs to continue exactly.

`<output_dir>/checkpoints/` holds:

    step-00000300/   one checkpoint, named by the optimizer step it was taken at:
                     `accelerator.save_state` files (model, optimizer, grad scaler, each rank's RNG
                     states), `scheduler.pt` (the schedule's state), `loop.json` (the loop's
                     position and history, the tracker run id, the model's shapes), `callbacks.pt`
                     (early stopping's state, the best score), `rank-<i>.pt` (each rank's sums of an
                     unfinished epoch) and, written last, `manifest.json` (each file's size and CRC-32)
    latest           the name of the newest complete checkpoint (a one-line text file)
    best             the name of the best one by `monitor` (kept out of the rotation)

A save writes into `.tmp-<name>/` (every rank takes part: sharded state is saved by its owners),
fsyncs, then the main process renames it into place and only then moves `latest`: a process
killed at any moment leaves `latest` naming a complete checkpoint. A save that fails (a full disk,
an I/O error) removes its temporary folder and ends the run with `WriteError`; `latest` stays.
Reading a checkpoint back is `train.resume`'s job. Accelerate has automatic checkpoint naming, but
it finds the newest by parsing folder names and has no pointer, no temp-then-rename, no "best" and
no manifest, so the layout is ours; the contents are Accelerate's.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Optional

import torch

from .callbacks import Callback
from .devices import all_ok
from .errors import WriteError, first_line
from .files import atomic_write_text, file_mode, free_space

LATEST, BEST = "latest", "best"
LOOP_FILE, CALLBACKS_FILE, SCHEDULER_FILE, MANIFEST = "loop.json", "callbacks.pt", "scheduler.pt", "manifest.json"
FORMAT = 2


def model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def is_compiled(accelerator, model) -> bool:
    # a compiled model's saved state has `_orig_mod.` keys: it loads only into a compiled model
    return hasattr(accelerator.unwrap_model(model), "_orig_mod")


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in 1 MiB blocks: about a second per GB, read back from the page
    cache right after the save wrote it. Catches truncation and bit rot, not forgery."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def write_manifest(folder: Path) -> None:
    """`manifest.json`: each file's size and CRC-32. Also gives every file the umask's mode
    (safetensors writes 0600, which a team sharing the folder cannot read)."""
    mode = file_mode()
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, mode)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "crc32": file_crc32(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))


def _reason(error: Optional[BaseException], written: Path) -> str:
    """Why a save failed, in a few words. torch.save reports a full disk as a RuntimeError about
    stream positions: when the free space is less than what the save had written, say so."""
    if error is None:
        return "another process failed"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = first_line(error)
    try:
        size = sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
        if shutil.disk_usage(written.parent).free < max(size, 2**20):
            return "No space left on device" + (f": {text}" if text else "")
    except OSError:
        pass
    return text or type(error).__name__


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_own_files(folder: Path, index: int) -> None:
    """fsync the files process `index` writes into a checkpoint (its RNG states, its epoch sums,
    its shards: `random_states_1.pkl`, `rank-1.pt`, `__1_0.distcp`); the main process fsyncs the
    whole folder before it renames it."""
    import re

    own = re.compile(rf"(_{index}\.|-{index}\.|__{index}_)")
    for p in sorted(folder.rglob("*")):
        if p.is_file() and own.search(p.name):
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoint(Callback):
    """Saves a checkpoint every `every_steps` optimizer steps (None: never mid-epoch), at each
    epoch end and when the run is interrupted; keeps the `keep_last` newest plus the best by
    `monitor`. The states of callbacks that have a `state_key` are saved with it."""

    state_key = "checkpoint"

    def __init__(self, loop, root: str | Path, every_steps: Optional[int] = None, keep_last: int = 2,
                 monitor: Optional[str] = None, mode: str = "min", tracker_run_id: Optional[str] = None):
        self.loop = loop  # the checkpoint saves the loop's state: it alone reads the loop's insides
        self.root = Path(root)
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.monitor, self.mode = monitor, mode
        self.tracker_run_id = tracker_run_id
        self.best: Optional[float] = None
        self.last_saved: Optional[Path] = None

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")

    # events
    def on_train_begin(self):
        if self.loop.is_main_process and self.root.is_dir():
            for stale in [*self.root.glob(".tmp-*"), *self.root.glob(".old-*")]:  # a process killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        self.loop.accelerator.wait_for_everyone()

    def on_train_batch_end(self, batch):
        loop = self.loop
        # the last batch of an epoch is saved by on_epoch_end, after validation
        if self.every_steps and loop.stepped and loop.step % self.every_steps == 0 \
                and batch < loop.batches_per_epoch:
            self.save()

    def on_epoch_end(self, epoch, row):
        value = row.get(self.monitor) if self.monitor else None
        better = value is not None and (self.best is None or (value < self.best if self.mode == "min"
                                                               else value > self.best))
        if better:
            self.best = value
        self.save(best=better)

    def on_interrupt(self, epoch, batch):
        if self.last_saved is not None and self.last_saved.name == f"step-{self.loop.step:08d}":
            return  # this very step was just saved
        self.save()

    # the save
    def save(self, best: bool = False) -> Path:
        """Write a checkpoint of the loop as it is now (every process calls this at the same
        batch). Returns its path."""
        loop, acc = self.loop, self.loop.accelerator
        loop.check_status()  # a non-finite loss raises here: the last good checkpoint stays `latest`
        state = loop.state_dict()
        name = f"step-{loop.step:08d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        error = None
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
        except OSError as e:
            error = e
        if all_ok(acc, error is None):
            try:
                self._write(tmp, state)
                if not acc.is_main_process:  # on a shared file system, through this node's client
                    _fsync_own_files(tmp, acc.process_index)
            except Exception as e:  # torch.save and safetensors report a full disk as RuntimeError
                error = e
        if not all_ok(acc, error is None):  # every process learns that one of them failed
            reason = _reason(error, tmp)
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise WriteError(f"could not save checkpoint {name} to {self.root}/ ({reason}); "
                             f"{free_space(self.root)}; make room and run the same command again to resume")
        try:
            if acc.is_main_process:
                self._commit(tmp, final, best)
        except OSError as e:
            error = e
            shutil.rmtree(tmp, ignore_errors=True)
        if not all_ok(acc, error is None):  # nobody reads or moves on before the checkpoint is complete
            raise WriteError(f"could not complete checkpoint {name} in {self.root}/ ({_reason(error, tmp)}); "
                             f"{free_space(self.root)}; make room and run the same command again to resume")
        self.last_saved = final
        return final

    def _commit(self, tmp: Path, final: Path, best: bool) -> None:
        """Main process: the manifest, then the folder renamed into place, then `latest` (and
        `best`) moved to it. The same step saved again (a resumed epoch that ended where the
        interrupted one had saved) replaces the old folder only once the new one is in place, so
        that `latest` never names a missing folder."""
        write_manifest(tmp)
        _fsync_tree(tmp)
        old = final.with_name(f".old-{final.name}") if final.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if old is not None:
                os.replace(old, final)
            raise
        _fsync_dir(self.root)
        atomic_write_text(self.root / LATEST, final.name + "\n")
        if best:
            atomic_write_text(self.root / BEST, final.name + "\n")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._rotate()

    def _write(self, tmp: Path, state: dict) -> None:
        """Every process writes its files into `tmp`."""
        loop, acc = self.loop, self.loop.accelerator
        acc.save_state(str(tmp))  # every rank: its RNG file, and its shards when the state is sharded
        if state["unfinished"] is not None:  # this rank's share of the unfinished epoch
            torch.save(state["unfinished"], tmp / f"rank-{acc.process_index}.pt")
        if acc.is_main_process:
            model = acc.unwrap_model(loop.model, keep_torch_compile=False)
            meta = {"format": FORMAT, "position": state["position"], "history": state["history"],
                    "model_shapes": model_shapes(model), "compiled": is_compiled(acc, loop.model),
                    "tracker_run_id": self.tracker_run_id}
            (tmp / LOOP_FILE).write_text(json.dumps(meta, indent=1))
            if loop.scheduler is not None:
                torch.save(loop.scheduler.state_dict(), tmp / SCHEDULER_FILE)
            states = {cb.state_key: cb.state_dict() for cb in loop.events.callbacks if getattr(cb, "state_key", None)}
            torch.save(states, tmp / CALLBACKS_FILE)

    def _rotate(self) -> None:
        keep = {self.root.joinpath(p.read_text().strip()) for p in (self.root / LATEST, self.root / BEST)
                if p.is_file()}
        saved = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in saved[:-self.keep_last]:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
