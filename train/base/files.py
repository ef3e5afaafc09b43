"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Written by hand because the standard library has no single call for it: write a temporary file
in the same folder (same file system, so the rename is atomic), fsync it, then `os.replace`. The
file gets the mode a plain `open()` would give it under the process's umask (0644 under 022), so
that a team sharing an output folder can read it: `mkstemp` makes 0600, and some writers
(safetensors) recreate the file with 0600 themselves, so the mode is set after writing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Callable


def free_space(folder: str | Path) -> str:
    """The free space of the file system holding `folder` (or its parent), for error messages."""
    import shutil

    folder = Path(folder)
    try:
        usage = shutil.disk_usage(folder if folder.exists() else folder.parent)
        return f"{usage.free / 2**20:.1f} MB free"
    except OSError:
        return "free space unknown"


def file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0644 under 022)."""
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` to produce the file, then move it onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def pointer_target(pointer: Path) -> Optional[Path]:
    """The folder a pointer file names (one line: a name beside the pointer), if it is there:
    `checkpoints/latest` and `checkpoints/best`."""
    pointer = Path(pointer)
    if not pointer.is_file():
        return None
    target = pointer.parent / pointer.read_text().strip()
    return target if target.is_dir() else None
