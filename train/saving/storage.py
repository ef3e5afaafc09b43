"""Checkpoint folders on disk: written atomically, verified before use. How, not what: the run's
state is gathered and put back by the checkpoint manager (`train.saving.checkpoint`).

`<output_dir>/checkpoints/` holds:

    step-00000300/   one checkpoint, named by the optimizer step it was taken at:
                     `accelerator.save_state` files (model, optimizer, grad scaler, each rank's RNG
                     states), `scheduler.pt` (the schedule's state), `loop.json` (the loop's
                     position and history, the model's shapes), `callbacks.pt` (the states of the
                     run's stateful parts: early stopping, the best score, the tracker's run id, your
                     callbacks), `rank-<i>.pt` (each rank's sums of an unfinished epoch) and,
                     written last, `manifest.json` (each file's size and CRC-32)
    latest           the name of the newest complete checkpoint (a one-line text file)
    best             the name of the best one by `monitor` (kept out of the rotation)

A save writes into `.tmp-<name>/` (every rank takes part: sharded state is saved by its owners),
fsyncs, then the main process renames it into place and only then moves `latest` (`commit`): a
process killed at any moment leaves `latest` naming a complete checkpoint. Accelerate has
automatic checkpoint naming, but it finds the newest by parsing folder names and has no pointer,
no temp-then-rename, no "best" and no manifest, so the layout is ours; the contents are
Accelerate's.

A checkpoint is trusted only after two checks, both before anything of it is loaded:
- *intact*: every file the save's `manifest.json` lists is there with its size and CRC-32
  (a truncated or bit-rotten file is caught here; the atomic save rules out torn writes);
- *safe*: no file needs more than tensors and plain data to unpickle. Every pickled file is
  scanned for the globals it would import (`torch.serialization.get_unsafe_globals_in_checkpoint`
  reads the pickle's opcodes without running them); anything beyond the few NumPy types of RNG
  states is refused, so a crafted file in a group-writable folder cannot run code. Loading itself
  then uses `torch.load(weights_only=True)` (Accelerate's loads and ours) and safetensors.

`find`: `resume=auto` takes the newest intact checkpoint, saying in one line each which ones it
skipped; `resume=PATH` takes exactly that one or stops with exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Optional

from train.base.errors import ConfigError, UserError, first_line
from train.base.files import atomic_write_text, file_mode, pointer_target
from train.base.paths import BEST, LATEST

LOOP_FILE, CALLBACKS_FILE, SCHEDULER_FILE, MANIFEST = "loop.json", "callbacks.pt", "scheduler.pt", "manifest.json"
FORMAT = 3

# what RNG states need beyond tensors and plain data (see accelerate.utils.other.TORCH_SAFE_GLOBALS)
SAFE_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType", "_codecs.encode"}


class DamagedCheckpoint(UserError):
    pass


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in 1 MiB blocks: about a second per GB, read back from the page
    cache right after the save wrote it. Catches truncation and bit rot, not forgery."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def write_manifest(folder: Path, checked: Optional[dict] = None) -> None:
    """`manifest.json`: each file's size and CRC-32 (those in `checked` as its writer read them
    back, the others read here). Also gives every file the umask's mode (safetensors writes 0600,
    which a team sharing the folder cannot read)."""
    mode = file_mode()
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, mode)
    checked = checked or {}
    files = {name: checked.get(name) or {"size": p.stat().st_size, "crc32": file_crc32(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
             for name in [p.relative_to(folder).as_posix()]}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))


def checkpoint_exception() -> type:
    """What torch's sharded (DCP) save raises when a process's write failed: a `BaseException`, which
    `except Exception` would let through as a crash to restart instead of a failed save."""
    import sys

    dcp = sys.modules.get("torch.distributed.checkpoint.api")  # imported by a sharded save, else none raised
    return dcp.CheckpointException if dcp is not None else Exception


def why_save_failed(error: Optional[BaseException], written: Path) -> str:
    """Why a save failed, in a few words. torch.save reports a full disk as a RuntimeError about
    stream positions: when the free space is less than what the save had written, say so."""
    if error is None:
        return "another process failed"
    failures = getattr(error, "failures", None)  # a sharded (DCP) save: {rank: (exception, stack)}
    if failures:
        first = next(iter(failures.values()))
        error = first[0] if isinstance(first, tuple) else first
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


def owner_of(name: str) -> Optional[int]:
    """The process that writes a checkpoint file of this name (its RNG states, its epoch sums, its
    shards: `random_states_1.pkl`, `rank-1.pt`, `__1_0.distcp`), or None: the main process's."""
    import re

    found = re.search(r"(?:random_states_|rank-)(\d+)\.|^__(\d+)_\d+\.distcp$", name)
    return int(found.group(1) or found.group(2)) if found else None


def fsync_own_files(folder: Path, index: int) -> None:
    """fsync the files process `index` writes into a checkpoint (`owner_of`); the main process
    fsyncs the whole folder before it renames it."""
    for p in sorted(folder.rglob("*")):
        if p.is_file() and owner_of(p.name) == index:
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, tmp: Path, final: Path, best: bool, keep_last: int, checked: Optional[dict] = None) -> None:
    """Main process: the manifest (`checked`: files already verified by their writers), then the
    folder renamed into place, then `latest` (and `best`) moved to it. The same step saved again (a
    resumed epoch that ended where the interrupted one had saved) replaces the old folder only
    once the new one is in place, so that `latest` never names a missing folder."""
    write_manifest(tmp, checked)
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
    _fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    if best:
        atomic_write_text(root / BEST, final.name + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    rotate(root, keep_last)



def rotate(root: Path, keep_last: int) -> None:
    keep = {pointer_target(root / name) for name in (LATEST, BEST)}
    saved = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in saved[:-keep_last]:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


LEFT_BEHIND = "left-behind"  # newer checkpoints of another continuation, out of rotation's way


def set_aside_newer(root: Path, resumed: Path) -> Optional[str]:
    """Resuming from a checkpoint older than others in `root`: move the newer ones (another
    continuation of the run) into `root/left-behind/`, where rotation and `resume=auto` leave them,
    and point `latest` at the resumed one. Returns the line that says so, or None."""
    resumed = Path(resumed).resolve()
    if resumed.parent != Path(root).resolve():
        return None  # another folder's checkpoint: this folder's own are not of its line
    newer = sorted(p for p in Path(root).glob("step-*") if p.is_dir() and p.name > resumed.name)
    if not newer:
        return None
    aside = Path(root) / LEFT_BEHIND
    aside.mkdir(exist_ok=True)
    best = pointer_target(Path(root) / BEST)
    for folder in newer:
        target, n = aside / folder.name, 1
        while target.exists():  # set aside before by another resume: both kept
            target, n = aside / f"{folder.name}.{n}", n + 1
        os.replace(folder, target)
    atomic_write_text(Path(root) / LATEST, resumed.name + "\n")
    lost_best = best is not None and best.name in {p.name for p in newer}
    if lost_best:
        (Path(root) / BEST).unlink()
    return (f"resuming from {resumed.name} leaves behind the newer {', '.join(p.name for p in newer)} (another "
            f"continuation): moved to {aside}/, which rotation and resume=auto leave alone"
            + ("; best was among them and is set again by this run's next better epoch" if lost_best else ""))


def latest(root: Path) -> Optional[Path]:
    """The checkpoint `latest` names in the checkpoints folder `root`, or None."""
    return pointer_target(Path(root) / LATEST)


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
    """Stop (exit 2) if any pickled file of the checkpoint would import more than plain data: the
    `torch.save` files, and a sharded (DCP) folder's `.metadata` and the pickled items of its shards
    (`train.saving.sharded_safety`). What cannot be checked is refused too: a symbolic link (the walk
    would not see where it leads, the loaders would), DCP's per-process `__N.metadata` (torch falls
    back to it, unpickled as it is), and a folder of shards without its `.metadata`."""
    from train.saving.sharded_safety import check_dcp_folder

    def refuse(what: str):
        raise UserError(f"checkpoint {path} holds {what}, which cannot be checked before loading; refusing it: "
                        f"resume from a checkpoint you trust")

    files = []
    for folder, subfolders, names in os.walk(path):  # os.walk does not follow links: each is refused
        for name in [*subfolders, *names]:
            if os.path.islink(os.path.join(folder, name)):
                refuse(f"a symbolic link ({Path(folder, name).relative_to(path)})")
        files += [Path(folder, name) for name in names]
        if any(name.endswith(".distcp") for name in names) and ".metadata" not in names:
            refuse(f"shards without their .metadata ({Path(folder).relative_to(path)})")
    for file in sorted(files):
        if file.name == ".metadata":
            try:
                check_dcp_folder(file, lambda blob, where: _check_saved(blob, f"{file.parent / where}"))
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"checkpoint file {file} would run code when loaded, or is not DCP's ({e}); "
                                f"refusing it: resume from a checkpoint you trust") from None
        elif file.name.endswith(".metadata"):
            refuse(f"a per-process DCP metadata file ({file.relative_to(path)})")
        elif file.suffix in (".pt", ".pkl", ".bin"):
            _check_saved(str(file), str(file))


def _check_saved(saved, where: str) -> None:
    """A `torch.save` file (a path or a blob) refused unless it imports only plain data."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        unsafe = set(get_unsafe_globals_in_checkpoint(saved)) - SAFE_GLOBALS
    except Exception as e:
        raise UserError(f"checkpoint file {where} is not a file torch.save wrote ({e}); refusing to "
                        f"load it: resume from another checkpoint") from None
    if unsafe:
        raise UserError(f"checkpoint file {where} would run code when loaded (it imports "
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
