"""Bit-identical runs on every device, on by default (`deterministic: true`).

On a CPU torch's kernels give the same bits run after run. On a GPU they do not by default: cuDNN
picks its convolution algorithms by timing them (`benchmark`), and some kernels add with atomics in
whatever order the threads arrive, so two runs with the same seed drift apart within an epoch and
a resumed run is not bit-identical to an uninterrupted one (measured on an H200: weights off by up
to 0.36 after a kill and rerun). The flags below make them deterministic, at no visible cost for
the models measured; `deterministic: false` gives cuDNN its autotuned kernels back.

torch's own switch, `use_deterministic_algorithms(True, warn_only=True)`, warns on every op that
has no deterministic kernel (the tutorial CNN's `adaptive_max_pool2d_backward_cuda`); those
warnings are collected here instead, so that the run names each op once."""

from __future__ import annotations

import os
import re
import warnings

import torch

# cuBLAS reads this when it makes its first handle (the first matmul on a GPU): set before that, in
# the process (and exported by the launch wrappers, which is earlier still)
CUBLAS_WORKSPACE = ":4096:8"
_NO_DETERMINISTIC_KERNEL = re.compile(r"^(\S+) does not have a deterministic implementation")
_ops: dict[str, int] = {}  # op -> its calls without a deterministic kernel in this process so far


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (cuDNN's deterministic algorithms, no autotuning, torch's deterministic
    implementations where an op has one), or (`on` False) cuDNN's autotuned kernels. Call before
    the model reaches a GPU."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        # with deterministic algorithms torch fills every new uninitialised tensor with NaN (to catch
        # code that reads it): on a GPU a kernel launch per allocation, and nothing here reads one
        torch.utils.deterministic.fill_uninitialized_memory = False
        _collect_warnings()
    else:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)


def ops_without_deterministic_kernel() -> dict[str, int]:
    """{op: calls} of the ops that ran without a deterministic kernel in this process so far (a run
    compares two of these to name the ops it ran itself)."""
    return dict(_ops)


def _collect_warnings() -> None:
    """torch's warning for an op without a deterministic kernel, kept as the op's name (once) instead
    of shown; every other warning goes where it went. (Installed again where something, a test
    harness say, has put its own `showwarning` in place since.)"""
    shown = warnings.showwarning
    if getattr(shown, "collects_deterministic_ops", False):
        return

    def collect(message, category, filename, lineno, file=None, line=None):
        found = _NO_DETERMINISTIC_KERNEL.match(str(message))
        if found:
            _ops[found.group(1)] = _ops.get(found.group(1), 0) + 1
            return
        shown(message, category, filename, lineno, file, line)

    collect.collects_deterministic_ops = True
    warnings.showwarning = collect
    # each op's warning every time (not once per place), so that an op first met in a later epoch is named too
    warnings.filterwarnings("always", message=r".* does not have a deterministic implementation")
