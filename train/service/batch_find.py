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
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from train.base.errors import ConfigError, RunError
from train.engine.devices import all_ok
from train.engine.timing import peak_memory_mb

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
    return peak_memory_mb(torch.device("cpu"))  # not Linux: the process's peak so far


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
        try:
            alone, error = fits_alone(size), None
        except BaseException as e:  # noqa: BLE001  (not out of memory: a bug, said on every process)
            alone, error = False, e
        if not all_ok(accelerator, error is None):  # no process is left waiting for one that failed
            if error is not None:
                raise error
            raise RunError("another process failed while the batch size was searched; its error says why")
        ok = all_ok(accelerator, alone)  # every process: the same answer
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


def refuse_sharded(strategy: str) -> None:
    """A sharded model gathers its parameters in collectives that no_sync does not remove: a process that
    ran out of memory would leave the others waiting in one."""
    if strategy == "fsdp":
        raise ConfigError("batch_size: auto does not search sharded models (strategy=fsdp) yet; give batch_size")


def find_micro_batch(loop, data, collate, settings: dict, accumulation: int) -> tuple[int, int, str]:
    """The search over batches of `data` (cut by the loader's `collate`) with `loop`'s model, loss and
    optimizer (their state is changed: the caller builds them afresh or puts them back). `settings`:
    batch_find's `max`, `global_batch`, `steps`, `memory_fraction`. Returns (micro-batch, gradient
    accumulation, the plan's line)."""
    from train.engine.devices import local_processes

    acc, world = loop.accelerator, loop.accelerator.num_processes
    whole = settings.get("global_batch")
    if whole is not None and (whole <= 0 or whole % world):
        raise ConfigError(f"batch_find.global_batch must be a multiple of the {world} process(es); got {whole}")
    cap = settings.get("max") or -(-len(data) // world)
    if whole is not None:
        cap = min(cap, whole // world)
    inner = getattr(loop.optimizer, "optimizer", loop.optimizer)  # the torch optimizer: it steps whatever the sync

    def steps(size: int) -> None:
        batch = next(iter(torch.utils.data.DataLoader(data, batch_size=size, collate_fn=collate)))
        features, labels = loop.to_device(*loop.split(batch))
        for _ in range(settings.get("steps", 2)):
            with acc.no_sync(loop.model):  # no collective that a failed process would leave waiting
                _, loss = loop.forward(features, labels)
                loss.backward()
            inner.step()
            inner.zero_grad(set_to_none=True)

    limit = None if acc.device.type == "cuda" else \
        cpu_memory_limit_mb(settings.get("memory_fraction", 0.8), local_processes(acc))
    try:
        found = search(lambda size: trial(steps, size, acc.device, limit), acc, cap)
    finally:
        torch._dynamo.reset()  # a compiled model saw every size: the run compiles afresh, as a run given its size
    if found.size == 0:
        raise ConfigError("batch_size: auto: not even a batch of 1 sample trains within memory; use a smaller model, "
                          "mixed_precision or gradient_checkpointing")
    found.limit = (f"at most {cap}" + (f" (batch_find.global_batch {whole} over {world} process(es))" if whole else "")
                   + (f"; on a CPU, a peak over {limit:,.0f} MB counts as out of memory" if limit else ""))
    micro = found.size
    if whole is not None:  # the largest micro-batch that divides each process's share of the global batch
        share = whole // world
        micro = max(d for d in range(1, found.size + 1) if share % d == 0)
        accumulation = share // micro
    line = f"batch_size: auto: {found.words()}: {micro} per process x accumulation {accumulation}"
    if whole is not None:
        line += f" keeps the global batch of {whole}"
    return micro, accumulation, line


def find_keeping_state(loop, data, collate, settings: dict, accumulation: int) -> tuple[int, int, str]:
    """`find_micro_batch` on a run's own model and optimizer (the class front's data), whose weights,
    optimizer state and random generators are put back afterwards: the run trains as if the search
    had not happened."""
    import copy

    from train.data.rng import capture_rng, restore_rng

    model = loop.accelerator.unwrap_model(loop.model, keep_torch_compile=False)
    inner = getattr(loop.optimizer, "optimizer", loop.optimizer)
    weights, state, rng = copy.deepcopy(model.state_dict()), copy.deepcopy(inner.state_dict()), capture_rng()
    try:
        return find_micro_batch(loop, data, collate, settings, accumulation)
    finally:
        model.load_state_dict(weights)
        inner.load_state_dict(state)
        restore_rng(rng)
