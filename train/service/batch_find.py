"""`batch_size: auto`: the largest per-process micro-batch that trains without running out of memory,
decided by every process together.

Sizes are tried by doubling from 1, then by bisecting between the last size that fitted and the first
that did not, up to a cap (`batch_find.max`; default, the training set's share of one process). A
trial runs `batch_find.steps` real training steps (the run's own forward and loss, a backward, the
optimizer's step) on a batch of that size from the training set. It fails on this process when torch
raises out of memory or, on a CPU (where running out of memory seldom raises: the system swaps or
kills), when the process's resident set passes its share of the node's memory
(`batch_find.memory_fraction` of what was available, over the processes of the node). After each
trial every process learns whether any failed (one small collective): an out-of-memory on one
process counts for all, so every process ends with the same size. The backward runs without
gradient synchronisation, so that a process that failed before it leaves no other waiting in a
collective.

Written here rather than taken from Accelerate's `find_executable_batch_size`: that one shrinks by
0.9 on each process alone after an error, so processes can disagree, and it retries the whole
training function.
"""

from __future__ import annotations

import gc
import resource
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from train.engine.devices import all_ok

OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")


@dataclass
class Found:
    size: int
    tried: list = field(default_factory=list)  # (size, fitted) in the order tried
    limit: str = ""  # what bounded the search, in words

    def words(self) -> str:
        tried = ", ".join(f"{s}{'' if ok else ' (out of memory)'}" for s, ok in self.tried)
        return f"largest micro-batch that fits {self.size} per process ({self.limit}; tried {tried})"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(w in str(error) for w in OUT_OF_MEMORY_WORDS))


def cpu_memory_limit_mb(fraction: float, local_processes: int) -> Optional[float]:
    """A CPU process's share of the node's available memory, in MiB (None where /proc/meminfo is not)."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
    except OSError:
        return None
    available_kb = int(info["MemAvailable"].split()[0])
    return _status_mb("VmRSS") + fraction * available_kb / 1024 / max(local_processes, 1)


def _status_mb(field: str) -> float:
    """A figure of /proc/self/status in MiB (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start VmHWM (the peak resident set) afresh, so that a trial's own peak is measured."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def search(fits_alone: Callable[[int], bool], accelerator, cap: int) -> Found:
    """Doubling, then bisecting, up to `cap`; `fits_alone(size)` says whether a trial fitted on this process."""
    found = Found(0)

    def fits(size: int) -> bool:
        ok = all_ok(accelerator, fits_alone(size))  # every process: the same answer
        found.tried.append((size, ok))
        return ok

    good, bad, size = 0, None, 1
    while size <= cap:
        if not fits(size):
            bad = size
            break
        good, size = size, size * 2
    if bad is None:  # fitted up to the last power of two under the cap: try up to the cap itself
        bad = cap + 1
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    found.size = good
    return found


def trial(step: Callable[[int], None], size: int, device: torch.device, cpu_limit_mb: Optional[float]) -> bool:
    """Whether `step(size)` (training steps on a batch of `size`) ran within memory on this process."""
    measure = device.type != "cuda" and cpu_limit_mb is not None
    if measure:
        _reset_peak()
    try:
        step(size)
        ok = not measure or _status_mb("VmHWM") <= cpu_limit_mb
    except BaseException as error:  # noqa: BLE001  (anything else is re-raised)
        if not is_out_of_memory(error):
            raise
        ok = False
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ok
