"""Checkpoints: atomic saves of everything a run needs to continue exactly, and the resume.

`<output_dir>/checkpoints/` holds:

    step-00000300/   one checkpoint: `accelerator.save_state` files (model, optimizer, schedule,
                     grad scaler, each rank's RNG states), `loop.json` (the loop position, the
                     history so far, the tracker run id, the model's shapes), `callbacks.pt`
                     (early stopping's state, the best score) and `rank-<i>.pt` (each rank's
                     running sums of the unfinished epoch)
    latest           the name of the newest complete checkpoint (a one-line text file)
    best             the name of the best one by `monitor` (kept out of the rotation)

A save writes into `.tmp-<name>/`, every rank taking part (sharded state is saved by its owners),
fsyncs, then the main process renames it into place and only then moves `latest`: a process
killed at any moment leaves `latest` naming a complete checkpoint. Accelerate has automatic
checkpoint naming, but it finds the newest by parsing folder names and has no pointer, no
temp-then-rename and no "best", so the layout is ours; the contents are Accelerate's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .callbacks import Callback
from .errors import ConfigError
from .files import atomic_write_text

LATEST, BEST, LOOP_FILE, CALLBACKS_FILE = "latest", "best", "loop.json", "callbacks.pt"
FORMAT = 1


# ------------------------------------------------------------------------------ RNG order
def capture_rng() -> dict:
    """The global RNG states of this process (Python, NumPy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ the position
@dataclass
class Position:
    """Where a checkpoint was taken. `step_in_epoch` batches of epoch `epoch` are done; 0 means
    the epoch has not started (the checkpoint was taken at the end of epoch `epoch - 1`)."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0
    processes: int = 1
    samples_seen: int = 0  # training samples consumed by all processes together

    @classmethod
    def of(cls, loop, epoch: int, step_in_epoch: int) -> "Position":
        return cls(epoch, step_in_epoch, loop.global_step, loop.accelerator.num_processes, loop.samples_seen)


@dataclass
class Resume:
    """What `load` hands the loop: the position, and for a mid-epoch checkpoint this rank's
    partial sums and the RNG states to put back once the epoch's data iterator exists."""

    path: Path
    position: Position
    history: list
    sums: Optional[dict] = None
    rng: Optional[dict] = None
    callbacks: dict = field(default_factory=dict)
    tracker_run_id: Optional[str] = None


def model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _is_compiled(loop) -> bool:
    # a compiled model's saved state has `_orig_mod.` keys: it loads only into a compiled model
    return hasattr(loop.accelerator.unwrap_model(loop.model), "_orig_mod")


def _read_meta(path: Path) -> dict:
    return json.loads((path / LOOP_FILE).read_text())


def _pointer(root: Path, name: str) -> Optional[Path]:
    pointer = root / name
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    return target if (target / LOOP_FILE).is_file() else None


def latest(root: Path) -> Optional[Path]:
    """The newest complete checkpoint in the checkpoints folder `root`, or None."""
    return _pointer(Path(root), LATEST)


def find(resume: str, output_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: for `auto`, the one `latest` names in `output_dir` (None if
    there is none); for `none`, None; otherwise the given path, which must be a checkpoint."""
    root = Path(output_dir) / "checkpoints"
    if resume == "none":
        if latest(root) is not None:
            raise ConfigError(f"output_dir '{output_dir}' holds checkpoints of an earlier run; resume=auto "
                              f"continues it, or choose a new output_dir")
        return None
    if resume == "auto":
        return latest(root)
    path = Path(resume)
    if path.is_dir() and not (path / LOOP_FILE).is_file():
        path = latest(path / "checkpoints") or latest(path) or path  # an output_dir, or a checkpoints folder
    if not path.exists():
        raise ConfigError(f"resume='{resume}': no such checkpoint; give an existing checkpoint folder, or resume=auto")
    if not (path / LOOP_FILE).is_file():
        raise ConfigError(f"resume='{resume}' is not a checkpoint (no {path / LOOP_FILE}); give a folder such as "
                          f"{Path(output_dir) / 'checkpoints' / 'step-00000100'}, or resume=auto")
    return path


def load(loop, path: Path) -> Resume:
    """Load the checkpoint at `path` into `loop`'s prepared objects (every process). Checks first
    that it was saved from a model of the same shapes. Returns the rest for the loop to resume."""
    meta = _read_meta(path)
    saved = meta["model_shapes"]
    current = model_shapes(loop.accelerator.unwrap_model(loop.model, keep_torch_compile=False))
    if saved != current:
        diff = next((k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)), "?")
        raise ConfigError(f"checkpoint '{path}' is of a different model ({diff}: {saved.get(diff)} saved, "
                          f"{current.get(diff)} now); use another output_dir")
    if meta.get("compiled", False) != _is_compiled(loop):
        raise ConfigError(f"checkpoint '{path}' was saved with compile={str(meta.get('compiled')).lower()}; "
                          f"resume it with the same setting")
    position = Position(**meta["position"])
    mid_epoch = position.step_in_epoch > 0
    world = loop.accelerator.num_processes
    if mid_epoch and position.processes != world:
        raise ConfigError(f"checkpoint '{path}' was taken mid-epoch by {position.processes} process(es); resume it "
                          f"with {position.processes}, or from an epoch-end checkpoint")
    loop.accelerator.load_state(str(path))
    resume = Resume(path, position, meta["history"], tracker_run_id=meta.get("tracker_run_id"),
                    callbacks=torch.load(path / CALLBACKS_FILE, weights_only=True))
    if mid_epoch:
        resume.sums = torch.load(path / f"rank-{loop.accelerator.process_index}.pt", weights_only=True)
        # load_state just put back this rank's RNG states as they were at the save; starting the
        # epoch's data iterator draws from them, so the loop restores them after it has started
        resume.rng = capture_rng()
    return resume


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ the callback
class Checkpoint(Callback):
    """Saves a checkpoint every `every_steps` batches (None: never mid-epoch), at each epoch end
    and when the run is interrupted; keeps the `keep_last` newest plus the best by `monitor`.

    The states of callbacks that have a `state_key` (early stopping, this one) are saved with it.
    """

    state_key = "checkpoint"

    def __init__(self, root: str | Path, every_steps: Optional[int] = None, keep_last: int = 2,
                 monitor: Optional[str] = None, mode: str = "min", tracker_run_id: Optional[str] = None):
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
            for stale in self.root.glob(".tmp-*"):  # left by a process killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        self.loop.accelerator.wait_for_everyone()

    def on_train_batch_end(self, step):
        loop = self.loop
        # the last batch of an epoch is saved by on_epoch_end, after validation
        if self.every_steps and loop.global_step % self.every_steps == 0 and step < loop.steps_per_epoch:
            self.save(Position.of(loop, loop.epoch, step))

    def on_epoch_end(self, epoch, row):
        loop = self.loop
        value = row.get(self.monitor) if self.monitor else None
        better = value is not None and (self.best is None or (value < self.best if self.mode == "min"
                                                               else value > self.best))
        if better:
            self.best = value
        self.save(Position.of(loop, epoch + 1, 0), best=better)

    def on_interrupt(self, epoch, step):
        if self.last_saved is not None and self.last_saved.name == f"step-{self.loop.global_step:08d}":
            return  # this very step was just saved (the status check ran inside that save)
        self.save(Position.of(self.loop, epoch, step))

    # the save
    def save(self, position: Position, best: bool = False) -> Path:
        """Write a checkpoint (every process calls this at the same point). Returns its path."""
        loop, acc = self.loop, self.loop.accelerator
        loop.check_status()  # a non-finite loss raises here: the last good checkpoint stays `latest`
        name = f"step-{position.global_step:08d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # every rank: its RNG file, and its shards when the state is sharded
        if position.step_in_epoch > 0:  # this rank's share of the unfinished epoch's metric sums
            torch.save(loop.partial_epoch_state(), tmp / f"rank-{acc.process_index}.pt")
        if acc.is_main_process:
            meta = {
                "format": FORMAT, "position": vars(position), "history": loop.history.rows,
                "model_shapes": model_shapes(acc.unwrap_model(loop.model, keep_torch_compile=False)),
                "compiled": _is_compiled(loop),
                "tracker_run_id": self.tracker_run_id,
            }
            (tmp / LOOP_FILE).write_text(json.dumps(meta, indent=1))
            states = {cb.state_key: cb.state_dict() for cb in loop.events.callbacks if getattr(cb, "state_key", None)}
            torch.save(states, tmp / CALLBACKS_FILE)
        acc.wait_for_everyone()  # every rank's files are written
        if acc.is_main_process:
            _fsync_tree(tmp)
            if final.exists():  # the same step saved before (resumed from an older checkpoint)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            atomic_write_text(self.root / LATEST, name + "\n")
            if best:
                atomic_write_text(self.root / BEST, name + "\n")
            self._rotate()
        acc.wait_for_everyone()  # nobody reads or moves on before the checkpoint is complete
        self.last_saved = final
        return final

    def _rotate(self) -> None:
        keep = {self.root.joinpath(p.read_text().strip()) for p in (self.root / LATEST, self.root / BEST)
                if p.is_file()}
        saved = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in saved[:-self.keep_last]:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)


def apply(loop, resume: Resume, callbacks) -> None:
    """Put the loop and the stateful callbacks where the checkpoint left them."""
    loop.resume_from(resume)
    by_key = {cb.state_key: cb for cb in callbacks if getattr(cb, "state_key", None)}
    for key, state in resume.callbacks.items():
        if key in by_key:
            by_key[key].load_state_dict(state)
