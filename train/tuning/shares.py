"""What each of a search's concurrent trials gets of this machine: its own cores (pinned with
taskset) and its own GPUs (`CUDA_VISIBLE_DEVICES`), so that `--workers W` trials do not compete for
one device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass
class Share:
    cpus: Optional[list[int]] = None  # None: every core (one worker)
    gpus: Optional[list[str]] = None  # None: every GPU the search sees (one worker, or no GPU)

    def env(self) -> dict:
        """The environment a trial with this share runs in, beyond the search's own."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus)} if self.gpus else {}

    def words(self) -> str:
        cpus = f"cores {','.join(map(str, self.cpus))}" if self.cpus else "every core"
        return cpus + (f", GPU {','.join(self.gpus)}" if self.gpus else "")


def visible_gpus() -> list[str]:
    """The GPUs this search may hand out: `CUDA_VISIBLE_DEVICES` as given (indices or UUIDs), else
    the ones torch counts (0..n-1; NVML's count, without starting CUDA here)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def shares(workers: int, gpus: list[str]) -> list[Share]:
    """One share per worker slot: cores split evenly (a core each, shared round the slots, where
    there are more workers than cores); GPUs split evenly in blocks where there are at least as
    many as workers, else one each, round the slots (trials then share a GPU)."""
    if workers == 1:
        return [Share()]
    cpus = sorted(os.sched_getaffinity(0))
    if workers >= len(cpus):
        cpu_parts = [[cpus[i % len(cpus)]] for i in range(workers)]
    else:
        per = len(cpus) // workers
        cpu_parts = [cpus[i * per:(i + 1) * per] for i in range(workers)]
    if not gpus:
        gpu_parts = [None] * workers
    elif len(gpus) >= workers:
        per = len(gpus) // workers
        gpu_parts = [gpus[i * per:(i + 1) * per] for i in range(workers)]
    else:
        gpu_parts = [[gpus[i % len(gpus)]] for i in range(workers)]
    return [Share(c, g) for c, g in zip(cpu_parts, gpu_parts)]
