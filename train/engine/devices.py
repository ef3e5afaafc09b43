"""Devices, processes and precision: the `Accelerator` a run uses, and how to say what it is.

Everything here goes through `accelerate`: the same settings give one process on a CPU, one GPU,
all GPUs of a node or many nodes, depending on how the script was launched.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
from datetime import timedelta
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

from train.base.errors import ConfigError
from train.distributed.determinism import set_deterministic
from train.distributed.strategy import fsdp_plugin, take_fsdp_on_cpu_ranks
from train.distributed.quiet_processes import only_main_prints
from train.distributed.upstream import cache_package_lookups

_shutdown_registered: list = []
# The processes of one job may reach the process group this far apart (imports on busy cores, a slow
# shared file system, a node that boots late): joining is allowed this long, whatever the
# collective timeout, which bounds every wait after that.
STARTUP_ALLOWANCE_S = 300.0
_collective_timeout: list = []  # the timeout the groups of this process were given, once set


def make_accelerator(mixed_precision: Optional[str] = None, gradient_accumulation_steps: int = 1,
                     seed: Optional[int] = None, collective_timeout_s: Optional[float] = None,
                     deterministic: bool = True, strategy: str = "ddp", fsdp: Optional[dict] = None,
                     **kwargs) -> Accelerator:
    """An `Accelerator` set up for the loop. `mixed_precision=None` takes the launcher's choice
    (`accelerate launch --mixed_precision ...`), else fp32. The shuffling order of each epoch is a
    function of `seed` (None: torch's seed when the loader is prepared) and the epoch.
    `collective_timeout_s` bounds how long a process waits for the others in any collective once
    they have all joined (joining may take STARTUP_ALLOWANCE_S); it takes effect with the first
    accelerator of a process, which creates the process group. `deterministic`: deterministic
    kernels (`train.distributed.determinism`), set before anything reaches the device. `strategy`
    "fsdp" shards the model over the processes with the `fsdp` settings (`train.distributed.strategy`)."""
    set_deterministic(deterministic)
    cache_package_lookups()
    mixed_precision = resolve_precision(mixed_precision, kwargs.get("cpu", False))
    if mixed_precision == "fp16" and not _has_gpu():
        raise ConfigError("mixed_precision=fp16 needs a GPU; on a CPU use mixed_precision=bf16 or no")
    handlers = list(kwargs.pop("kwargs_handlers", []))
    if collective_timeout_s is not None:
        joining = max(collective_timeout_s, STARTUP_ALLOWANCE_S)
        handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=joining)))
    plugin = fsdp_plugin(fsdp) if strategy == "fsdp" else None
    if plugin is not None:
        kwargs["fsdp_plugin"] = plugin
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        # the seedable sampler makes shuffling a function of (seed, epoch) on every process,
        # which is what makes an interrupted run resumable at the exact next batch
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed, non_blocking=True),
        step_scheduler_with_optimizer=False,  # the loop steps the schedule itself (Loop.train_step)
        kwargs_handlers=handlers,
        **kwargs,
    )
    take_fsdp_on_cpu_ranks(accelerator, plugin)
    if collective_timeout_s is not None and accelerator.num_processes > 1 and not _collective_timeout:
        accelerator.wait_for_everyone()  # all have joined: from here a longer wait is a stall
        torch.distributed.set_timeout(timedelta(seconds=collective_timeout_s))
        _collective_timeout.append(timedelta(seconds=collective_timeout_s))
    if accelerator.num_processes > 1 and not _shutdown_registered:
        atexit.register(shutdown, accelerator)
        _shutdown_registered.append(True)
    _quiet_tied_weights()
    only_main_prints(accelerator.is_main_process)  # every front, before a model's library loads it
    return accelerator


class _TiedWeightsNote(logging.Filter):
    """Accelerate says `Removed shared tensor {'lm_head.weight'} while saving` at every checkpoint
    of a model with tied weights (a language model's embedding and output layer): safetensors
    stores a shared tensor once, and loading ties it again. Said once per save, it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


def _quiet_tied_weights() -> None:
    log = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedWeightsNote) for f in log.filters):
        log.addFilter(_TiedWeightsNote())


def _has_gpu() -> bool:
    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available() or xpu


def shutdown(accelerator: Accelerator) -> None:
    """Release prepared objects, then end training (which destroys the process group).

    Two gloo ranks sometimes aborted at interpreter exit ("terminate called without an active
    exception") when DDP models outlived the process group; releasing them first cured it. Safe
    to call twice: the second call finds no group.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return  # one process: nothing to release before exit (and gc.collect costs ~0.4 s)
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def set_tf32(on: Optional[bool]) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions (NVIDIA Ampere and later): ~10 bits of
    mantissa instead of 23, several times the speed. None leaves torch's defaults (matmul off,
    convolutions on)."""
    if on is not None:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def local_processes(accelerator: Accelerator) -> int:
    """Processes of this run on this node (they share its CPUs)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def processes_in_words(accelerator: Accelerator) -> str:
    """The processes and precision in words, e.g. '2 processes on CPUs (gloo), fp32'."""
    world, device = accelerator.num_processes, accelerator.device
    nodes = max(1, world // max(1, local_processes(accelerator)))
    if world == 1:
        where = f"1 process on {'the CPU' if device.type == 'cpu' else device}"
    else:
        kind = {"cpu": "CPUs", "cuda": "GPUs"}.get(device.type, device.type)
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "?"
        where = f"{world} processes on {kind} ({backend}" + (f", {nodes} nodes)" if nodes > 1 else ")")
        strategy = accelerator.distributed_type.value
        if strategy in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            where += f", {strategy.lower()}"
    precision = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with a grad scaler"}
    return f"{where}, {precision.get(accelerator.mixed_precision, accelerator.mixed_precision)}"


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere torch emulates
    bf16 autocast, several times slower than fp32 (an epoch of configs/mnist_fast.yaml: about 20 s
    with AVX-512 BF16, 280 s with AVX2 only)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # not Linux: no way to tell, say nothing
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(mixed_precision: Optional[str], cpu: bool = False) -> Optional[str]:
    """`auto`: bf16 where the device this process will train on computes it in hardware, else no."""
    if mixed_precision != "auto":
        return mixed_precision
    on_cpu = cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") \
        or not torch.cuda.is_available()
    # compute capability 8 (Ampere) and later compute bf16; is_bf16_supported() also says yes where it
    # is emulated, and probes cuda:0 from every rank before the device is set
    fast = cpu_has_bf16_units() if on_cpu else \
        torch.cuda.get_device_capability(int(os.environ.get("LOCAL_RANK", "0")))[0] >= 8
    return "bf16" if fast else "no"


def precision_note(mixed_precision: str, device_type: str) -> str | None:
    """One line for the plan when the chosen precision is slow on this device, else None."""
    if mixed_precision == "bf16" and device_type == "cpu" and not cpu_has_bf16_units():
        return ("bf16 on this CPU is emulated (no AVX-512 BF16 or AMX): several times slower than fp32; "
                "set mixed_precision=no for speed")
    return None


_host_groups: dict = {}


def host_group(accelerator: Accelerator):
    """A process group over gloo for small agreements on host values (a stream's rounds), so that
    they never wait for a device: the default group where it is gloo already, else one made once
    (every process makes it at the same point, as a group must be made). None for one process."""
    if accelerator.num_processes == 1:
        return None
    dist = torch.distributed
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if "gloo" not in _host_groups:
        _host_groups["gloo"] = dist.new_group(backend="gloo", timeout=(_collective_timeout or [None])[0])
    return _host_groups["gloo"]


def all_ok(accelerator: Accelerator, ok: bool) -> bool:
    """True on every process if `ok` is true on every process (one small collective)."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=accelerator.device)
    return accelerator.reduce(flag, "max").item() == 0.0


def from_main(accelerator: Accelerator, fn):
    """`fn()` run on the main process only, its result (or its error) shared with every process,
    so that all of them go on, or stop with the same error, together. An error that is not one of
    ours becomes a `RunError` naming it (a traceback on one process would leave the others
    waiting for it)."""
    from train.base.errors import RunError, describe

    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except RunError as e:
            error = e
        except Exception as e:
            error = RunError(describe(e))
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([result, error])
        result, error = shared
    if error is not None:
        error.same_on_every_process = True
        raise error
    return result


def gather_objects(accelerator: Accelerator, obj) -> list:
    """Every process's `obj` (picklable), in process order, on every process."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def gather_rows(accelerator: Accelerator, tensors, pads) -> list:
    """Every process's rows of each of `tensors`, in process order (the same result on every
    process). The processes' tensors may differ in every dimension (rows, a sequence's length):
    each is padded to the largest with its `pads` value (-100 for labels, which every token-level
    loss and metric skips) before the gather, and its padding rows are dropped after it."""
    tensors = list(tensors)
    if accelerator.num_processes == 1:
        return tensors
    local = torch.tensor([d for t in tensors for d in t.shape], device=accelerator.device)
    every = accelerator.gather(local.unsqueeze(0)).tolist()  # (processes, all dims): one small gather
    out, at = [], 0
    for t, pad in zip(tensors, pads):
        dims = [row[at:at + t.dim()] for row in every]
        at += t.dim()
        largest = [max(d[i] for d in dims) for i in range(t.dim())]
        padded = t.new_full(largest, pad)
        padded[tuple(slice(0, n) for n in t.shape)] = t
        gathered = accelerator.gather(padded)
        out.append(torch.cat([gathered[p * largest[0]:p * largest[0] + d[0]] for p, d in enumerate(dims)]))
    return out


def to_device(item, device):
    """A tensor, or a tuple/list/dict of them, on `device` (other values as they are)."""
    from train.data.nested import apply

    return apply(lambda t: t.to(device, non_blocking=True), item)


def write_on_main(accelerator: Accelerator, write, path) -> None:
    """`write()` on the main process; if it fails (a full disk, a quota), every process raises
    the same `WriteError`, so that none is left waiting in the next collective."""
    error = None
    if accelerator.is_main_process:
        try:
            write()
        except Exception as e:  # safetensors and torch.save report a full disk as their own errors
            error = e
    if not all_ok(accelerator, error is None):
        from pathlib import Path

        from train.base.errors import WriteError, describe
        from train.base.files import free_space

        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror
        else:
            reason = describe(error) if error is not None else "on the main process"
        raise WriteError(f"could not write {path} ({reason}); {free_space(Path(path).parent)}")


def accelerator_for(options):
    """The accelerator a run with these `RunOptions` uses (make it first where the device is
    needed before the run exists, e.g. to place data on it; then pass it to `Run`)."""
    from accelerate.utils import ProjectConfiguration

    o = options
    if "mlflow" in o.trackers:  # before Accelerate is asked for the tracker: it would raise its own error
        import importlib.util

        if any(importlib.util.find_spec(m) is None for m in ("mlflow", "sqlalchemy", "alembic")):
            raise ConfigError("tracking.mlflow needs MLflow's client and its SQLite store: pip install -e '.[mlflow]' "
                              "(mlflow-skinny, sqlalchemy, alembic), or set tracking.mlflow=false")
    set_tf32(o.tf32)
    from pathlib import Path

    out = Path(o.output_dir) if o.output_dir else None
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")) if out else None
    return make_accelerator(o.mixed_precision, o.gradient_accumulation_steps, o.seed, o.collective_timeout_s,
                            o.deterministic, o.strategy, o.fsdp,
                            log_with=list(o.trackers) or None, dynamo_backend="inductor" if o.compile else None,
                            project_config=project)
