"""`profile:` — torch's profiler over a few training batches, without editing the loop.

Each process records batches `start_step` .. `start_step + steps - 1` (counted from 1 in this fit,
after one warm-up batch where there is one) and, when they are done, writes its trace
(`profile/rank<N>.json`, Chrome's trace format, which chrome://tracing and Perfetto open) and
torch's full table (`profile/summary-rank<N>.txt`); the main process prints the top operations by
self time in 100 columns. The profiler observes only: the weights after a profiled run are those of
an unprofiled one. On a GPU with `memory: true`, the CUDA allocator's history is recorded too and an
out-of-memory error leaves `profile/oom-rank<N>.pickle` (open it at https://pytorch.org/memory_viz).

torch.profiler is used directly rather than Accelerate's `profile()` context: that one wraps a block
of code, while a callback's hooks are where a run's batches begin and end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from train.base.text import wrapped
from train.engine.events import Callback

TOP = 12  # operations in the printed summary: one screen


def profilers(profile: dict) -> list:
    """The run's profiler, where `profile` (checked settings, train.config.options) asks for one."""
    return [Profiler(**profile)] if profile.get("steps") else []


def profile_window(start_step: int, steps: int) -> dict:
    """torch.profiler.schedule's arguments that record batches start_step .. start_step + steps - 1
    (1-based; the profiler counts `step()` calls from 0), with the batch before as warm-up."""
    warmup = 1 if start_step >= 2 else 0
    return dict(skip_first=max(start_step - 2, 0), wait=0, warmup=warmup, active=steps, repeat=1)


class Profiler(Callback):
    """See the module docstring. `activities`: a subset of ("cpu", "cuda"); empty: the CPU, and CUDA
    on a GPU."""

    def __init__(self, steps: int, start_step: int = 3, activities=(), memory: bool = False,
                 record_shapes: bool = False, print_fn=print):
        self.steps, self.start_step = steps, start_step
        self.activities, self.memory, self.record_shapes = tuple(activities), memory, record_shapes
        self.print = print_fn
        self.folder: Optional[Path] = None
        self.rank, self.speaks = 0, True
        self.profiler = None
        self.done = False

    def on_train_begin(self, run):
        from torch.profiler import ProfilerActivity, profile, schedule

        on_gpu = run.accelerator.device.type == "cuda"
        if not on_gpu:  # a CUDA build of torch on a machine without a GPU: Kineto writes an error that its
            os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # GPU count failed, and two trace lines, per run
        chosen = self.activities or (("cpu", "cuda") if on_gpu else ("cpu",))
        activities = [ProfilerActivity.CPU if a == "cpu" else ProfilerActivity.CUDA for a in chosen]
        self.rank, self.speaks = run.process_index, run.is_main_process  # every process records; one prints
        self.folder = Path(run.output_dir) / "profile" if run.output_dir else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.memory and on_gpu:
                self._keep_memory_on_oom()
        self.profiler = profile(activities=activities, schedule=schedule(**profile_window(self.start_step, self.steps)),
                                on_trace_ready=self._ready, record_shapes=self.record_shapes,
                                profile_memory=self.memory, with_flops=True)
        self.profiler.start()

    def on_train_batch_end(self, run):
        if self.profiler is not None:
            self.profiler.step()

    def on_interrupt(self, run):
        self._stop()

    def on_train_end(self, run):
        self._stop()

    def _stop(self) -> None:
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            profiler.stop()  # writes what was recorded if the window was cut short

    def _ready(self, profiler) -> None:
        if self.done:
            return
        self.done = True
        averages = profiler.key_averages()
        on_device = any(getattr(e, "self_device_time_total", 0) for e in averages)
        by = "self_device_time_total" if on_device else "self_cpu_time_total"
        if self.folder is not None:
            profiler.export_chrome_trace(str(self.folder / f"rank{self.rank}.json"))
            (self.folder / f"summary-rank{self.rank}.txt").write_text(averages.table(sort_by=by, row_limit=50) + "\n")
        if self.speaks:
            where = f"; traces and full tables in {self.folder}/" if self.folder is not None else ""
            self.print(summary(averages, by, self.steps), flush=True)
            self.print(wrapped(f"profile: {self.steps} batch(es) from batch {self.start_step}{where}"), flush=True)

    def _keep_memory_on_oom(self) -> None:
        """The allocator's recent history, dumped where the run is when CUDA runs out of memory."""
        path = self.folder / f"oom-rank{self.rank}.pickle"
        torch.cuda.memory._record_memory_history(max_entries=100_000)

        def dump(device, alloc, device_alloc, device_free):
            torch.cuda.memory._dump_snapshot(str(path))

        torch._C._cuda_attach_out_of_memory_observer(dump)


def summary(averages, by: str, steps: int) -> str:
    """The top operations by self time, per profiled batch, within 100 columns."""
    ops = [e for e in averages if not e.key.startswith("ProfilerStep")]  # the whole batch, not an operation
    events = sorted(ops, key=lambda e: getattr(e, by), reverse=True)[:TOP]
    total = sum(getattr(e, by) for e in averages) or 1.0  # the batches' own time between operations counts too
    where = "device" if by.startswith("self_device") else "CPU"
    lines = [f"profile: top operations by self {where} time, per batch over {steps} batch(es)",
             f"{'operation':<52} {'calls':>8} {'self us':>11} {'share':>7} {'us/call':>9}"]
    for e in events:
        self_us = getattr(e, by)
        name = e.key if len(e.key) <= 52 else e.key[:49] + "..."
        lines.append(f"{name:<52} {e.count / steps:>8.1f} {self_us / steps:>11.1f} {100 * self_us / total:>6.1f}% "
                     f"{self_us / max(e.count, 1):>9.1f}")
    return "\n".join(lines)
