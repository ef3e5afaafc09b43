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
- Across nodes each node's first process writes the replicated state (weights, optimizer, the
  loop's position) into its own node's memory, beside its processes' own RNG states and epoch
  shares: each node can rebuild its own processes. A restart takes the memory checkpoint only when
  every node holds the same one intact, on the same process count; else the disk's, and one line
  says which (`Checkpoint.find`). A state sharded across nodes (FSDP) is not: a node holds only
  its processes' shards and process 0 alone writes the index; disk checkpoints only (the plan says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from train.base.errors import RunError
from train.engine.devices import gather_objects
from train.saving.storage import LOOP_FILE, damage, latest, refuse_unsafe


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


def newest_on_every_node(acc, memory: Optional[Path], disk: Optional[Path], resume: str, say) -> Optional[Path]:
    """Across nodes: each node's first process checks its own memory (`newest`); the memory
    checkpoint is taken when every node holds the same one, newer than `disk` and of this process
    count (a node's copy holds its own processes' parts only), else `disk`, said on the main process."""
    if memory is None or resume != "auto":
        return disk
    mine, error = None, None
    if acc.is_local_main_process:
        try:
            mine = newest(memory, disk, resume, lambda line: None)  # said once below, for every node
            if mine is not None and mine != disk and \
                    json.loads((mine / LOOP_FILE).read_text())["position"]["processes"] != acc.num_processes:
                mine = disk
        except RunError as e:  # a crafted file: refused on every process, as on one node
            error = e
    every = gather_objects(acc, (acc.is_local_main_process, mine and mine.name, error))
    refused = next((e for _, _, e in every if e is not None), None)
    if refused is not None:
        refused.same_on_every_process = True
        raise refused
    nodes = [name for local_main, name, _ in every if local_main]
    on_disk = disk.name if disk is not None else None
    if all(name == on_disk for name in nodes):
        return disk  # no node holds a newer one
    disk_name = f"{on_disk} on disk" if disk is not None else "the start"
    if len(set(nodes)) == 1:
        if acc.is_main_process:
            say(f"resuming from the memory checkpoint {nodes[0]} (each node's {memory}), newer than {disk_name}")
        return memory / nodes[0]
    if acc.is_main_process:
        held = ", ".join(f"node {i}: {name if name != on_disk else 'none newer'}" for i, name in enumerate(nodes))
        say(f"the nodes' memory checkpoints differ ({held}); resuming from {disk_name}")
    return disk
