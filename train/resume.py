"""Resuming: which checkpoint to trust, and putting a run back where it was.

A checkpoint is trusted only after two checks, both before anything of it is loaded:
- *intact*: every file the save's `manifest.json` lists is there with its size and CRC-32
  (a truncated or bit-rotten file is caught here; the atomic save rules out torn writes);
- *safe*: no file needs more than tensors and plain data to unpickle. Every pickled file is
  scanned for the globals it would import (`torch.serialization.get_unsafe_globals_in_checkpoint`
  reads the pickle's opcodes without running them); anything beyond the few NumPy types of RNG
  states is refused, so a crafted file in a group-writable folder cannot run code. Loading itself
  then uses `torch.load(weights_only=True)` (Accelerate's loads and ours) and safetensors.

`resume=auto` takes the newest intact checkpoint, saying in one line each which ones it skipped;
`resume=PATH` takes exactly that one or stops with exit 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import (CALLBACKS_FILE, LATEST, LOOP_FILE, MANIFEST, SCHEDULER_FILE, file_crc32, is_compiled,
                         model_shapes)
from .errors import ConfigError, UserError
from .rng import capture_rng

# what RNG states need beyond tensors and plain data (see accelerate.utils.other.TORCH_SAFE_GLOBALS)
SAFE_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType", "_codecs.encode"}


class DamagedCheckpoint(UserError):
    pass


@dataclass
class Resumed:
    """What a loaded checkpoint hands back besides the loop's state."""

    path: Path
    position: dict
    history: list
    tracker_run_id: Optional[str] = None
    callbacks: dict = field(default_factory=dict)


def latest(root: Path) -> Optional[Path]:
    """The checkpoint `latest` names in the checkpoints folder `root`, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    target = Path(root) / pointer.read_text().strip()
    return target if target.is_dir() else None


def damage(path: Path) -> Optional[str]:
    """Why the checkpoint at `path` cannot be trusted as intact, or None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST}"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name}: missing"
        try:
            size = file.stat().st_size
            if size != expected["size"]:
                return f"{name}: {size} bytes, expected {expected['size']}"
            if file_crc32(file) != expected["crc32"]:
                return f"{name}: checksum mismatch"
        except OSError as e:
            return f"{name}: unreadable ({e.strerror or e})"
    return None


def refuse_unsafe(path: Path) -> None:
    """Stop (exit 2) if any pickled file of the checkpoint would import more than plain data."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    for file in sorted(path.rglob("*")):
        if file.suffix not in (".pt", ".pkl", ".bin") or not file.is_file():
            continue
        try:
            unsafe = set(get_unsafe_globals_in_checkpoint(str(file))) - SAFE_GLOBALS
        except Exception as e:
            raise UserError(f"checkpoint file {file} is not a file torch.save wrote ({e}); refusing to "
                            f"load it: resume from another checkpoint") from None
        if unsafe:
            raise UserError(f"checkpoint file {file} would run code when loaded (it imports "
                            f"{', '.join(sorted(unsafe))}); refusing it: resume from a checkpoint you trust")


def _steps(root: Path) -> list[Path]:
    newest = latest(root)
    folders = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    return ([newest] if newest else []) + [p for p in folders if p != newest]


def find(resume: str, output_dir: Path, say=print) -> Optional[Path]:
    """The checkpoint to resume from (checked intact and safe), or None to start afresh."""
    root = Path(output_dir) / "checkpoints"
    if resume == "none":
        if _steps(root) if root.is_dir() else []:
            raise ConfigError(f"output_dir '{output_dir}' holds checkpoints of an earlier run; resume=auto "
                              f"continues it, or choose a new output_dir")
        return None
    if resume == "auto":
        candidates = _steps(root) if root.is_dir() else []
        skipped = []
        for path in candidates:
            why = damage(path)
            if why is None:
                refuse_unsafe(path)
                for name, reason in skipped:
                    say(f"checkpoint {name} is damaged ({reason}); resuming from {path.name}")
                return path
            skipped.append((path.name, why))
        if skipped:
            raise DamagedCheckpoint(f"no intact checkpoint in {root} ("
                                    + "; ".join(f"{n}: {r}" for n, r in skipped)
                                    + "); nothing was deleted: move the folder aside to start afresh")
        return None
    path = Path(resume)
    if path.is_dir() and not (path / LOOP_FILE).is_file():  # an output_dir, or a checkpoints folder
        path = latest(path / "checkpoints") or latest(path) or path
    if not path.exists():
        raise ConfigError(f"resume='{resume}': no such checkpoint; give an existing checkpoint folder, or resume=auto")
    if not (path / LOOP_FILE).is_file() and not (path / MANIFEST).is_file():
        raise ConfigError(f"resume='{resume}' is not a checkpoint (no {LOOP_FILE}); give a folder such as "
                          f"{root / 'step-00000100'}, or resume=auto")
    why = damage(path)
    if why is not None:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({why}); give another checkpoint, or resume=auto")
    refuse_unsafe(path)
    return path


def load(loop, path: Path) -> Resumed:
    """Load the checkpoint at `path` (found by `find`) into `loop` on every process: weights,
    optimizer, scaler, schedule, RNG states and the loop's position. Checks first that it was
    saved from a model of the same shapes and, mid-epoch, by as many processes."""
    meta = json.loads((path / LOOP_FILE).read_text())
    acc = loop.accelerator
    saved, current = meta["model_shapes"], model_shapes(acc.unwrap_model(loop.model, keep_torch_compile=False))
    if saved != current:
        diff = next((k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)), "?")
        was, now = (saved.get(diff, "absent"), current.get(diff, "absent"))
        raise ConfigError(f"checkpoint '{path}' is of a different model ({diff}: {was} saved, {now} now); "
                          f"use another output_dir")
    if meta.get("compiled", False) != is_compiled(acc, loop.model):
        raise ConfigError(f"checkpoint '{path}' was saved with compile={str(meta.get('compiled')).lower()}; "
                          f"resume it with the same setting")
    position, history = meta["position"], meta["history"]
    mid_epoch = position["epoch"] > len(history)
    if mid_epoch and position["processes"] != acc.num_processes:
        raise ConfigError(f"checkpoint '{path}' was taken mid-epoch by {position['processes']} process(es); "
                          f"resume it with {position['processes']}, or from an epoch-end checkpoint")
    acc.load_state(str(path))
    if loop.scheduler is not None and (path / SCHEDULER_FILE).is_file():
        loop.scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
    unfinished = None
    if mid_epoch:
        unfinished = torch.load(path / f"rank-{acc.process_index}.pt", weights_only=True)
    # load_state just put back this rank's RNG states as they were at the save; starting the
    # epoch's data iterator draws from them, so the loop puts them back once it has started
    loop.load_state_dict({"position": position, "history": history, "unfinished": unfinished},
                         rng=capture_rng() if mid_epoch else None)
    return Resumed(path, position, history, meta.get("tracker_run_id"),
                   torch.load(path / CALLBACKS_FILE, weights_only=True))


def apply_callback_states(resumed: Resumed, callbacks) -> None:
    """Put the stateful callbacks (early stopping, the checkpoint's best score) where they were."""
    by_key = {cb.state_key: cb for cb in callbacks if getattr(cb, "state_key", None)}
    for key, state in resumed.callbacks.items():
        if key in by_key:
            by_key[key].load_state_dict(state)
