"""Memory checkpoints (`checkpoint.memory_every_steps`): the run's whole state written often to this
node's memory (`train.base.paths.memory_checkpoints`: /dev/shm), beside the disk checkpoints, in
the same layout and by the same save transaction (`Checkpoint.save(root=...)`), so that a restart
after a crash loses the steps since the last memory save, not since the last disk save.

- Bounded: the newest alone is kept (rotation keeps one), and while the next is written there are
  two; a save checks for room for two first, and without it the run goes on with disk checkpoints
  only (said once).
- Chosen on resume (`resume=auto`) only when newer than the newest disk checkpoint, and verified
  (manifest, safe pickles) as a disk one is; the line that says so names it.
- Never the only copy at the end: a run ends with a disk checkpoint (the epoch's end, a stop
  signal's save), and the memory folder is removed when the run ends, by the run itself (and by
  the supervisor when the job ends), except when a crashed process leaves it for its restart.
- One node only: across nodes a node's memory holds only its own processes' files, so the run
  uses disk checkpoints alone there (the plan says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from train.saving.storage import damage, latest, refuse_unsafe


def newest(memory: Optional[Path], disk: Optional[Path], resume: str, say) -> Optional[Path]:
    """The memory checkpoint instead of `disk` when it is newer, intact and safe (resume=auto)."""
    candidate = latest(memory) if memory is not None and resume == "auto" else None
    if candidate is None or (disk is not None and candidate.name <= disk.name):
        return disk
    why = damage(candidate)
    if why is not None:
        say(f"memory checkpoint {candidate} is damaged ({why}); resuming from {disk.name if disk else 'the start'}")
        return disk
    refuse_unsafe(candidate)
    say(f"resuming from the memory checkpoint {candidate.name} ({memory}), newer than "
        f"{disk.name + ' on disk' if disk else 'any on disk'}")
    return candidate
