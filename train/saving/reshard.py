"""A checkpoint loaded into another layout of the model: one written sharded (`strategy=fsdp` on
several processes: torch DCP shards of the model and the optimizer) resumed where the model is whole
(one process), or one written whole (one process, or `ddp`) resumed into a sharded model.

Accelerate's `load_state` reads only the layout it would write now, and between two sharded layouts
(N sharded processes -> M) DCP reshards by itself; across the two layouts the state is read whole
here (the shards merged on each process, or the whole files read) and put into the model and its
optimizer by torch's own `set_model_state_dict` / `set_optimizer_state_dict`, which shard it where
the model is sharded. The optimizer's state is keyed by parameter names in between (a whole
optimizer's `state_dict` numbers its parameters). The rest of the checkpoint (RNG states, scaler,
loaders) is Accelerate's, loaded with no model or optimizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from train.base.errors import ConfigError
from train.base.paths import OPTIMIZER_FILE, SHARDED_MODEL, SHARDED_OPTIMIZER, WEIGHTS
from train.distributed.strategy import is_sharded


def written_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_MODEL).is_dir()


def needs_reshard(accelerator, path: Path) -> bool:
    """Whether the checkpoint at `path` was written in another layout than this run's model has."""
    return written_sharded(path) != is_sharded(accelerator)


def read_dcp(folder: Path) -> dict:
    """A DCP folder read whole on this process (no process group: every shard merged), as Accelerate's
    `merge_fsdp_weights` reads one. Check the checkpoint first (`storage.refuse_unsafe`): torch
    unpickles its `.metadata`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner, _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=dcp.FileSystemReader(str(folder)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return state


def load_across_layouts(accelerator, model, optimizer, path: Path) -> None:
    """Put back the model, optimizer and the rest of the checkpoint at `path` (checked intact and safe
    by the caller) written in the other layout (`needs_reshard`)."""
    from accelerate.checkpointing import load_accelerator_state
    from safetensors.torch import load_file

    path = Path(path)
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the torch optimizer
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    name_of = {id(p): name for name, p in plain.named_parameters()}
    params = [p for group in inner.param_groups for p in group["params"]]
    if any(id(p) not in name_of for p in params):
        raise ConfigError(f"checkpoint '{path}' was written {'sharded' if written_sharded(path) else 'whole'} and "
                          f"the optimizer holds parameters outside the model, which cannot be matched by name; "
                          f"resume it with the strategy and number of processes it was written with")
    order = [name_of[id(p)] for p in params]  # the names of the parameters as the optimizer numbers them
    sharded_now = is_sharded(accelerator)
    reads = not sharded_now or accelerator.is_main_process  # into shards: the main process reads, and sends
    weights, optim = {}, {}
    if reads and written_sharded(path):
        weights = read_dcp(path / SHARDED_MODEL)["model"]
        optim = read_dcp(path / SHARDED_OPTIMIZER)["optimizer"]
    elif reads:
        weights = load_file(str(path / WEIGHTS))
        saved = torch.load(path / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
        optim = {"state": {order[i]: s for i, s in saved["state"].items()},
                 "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}
    if sharded_now:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        # the main process's whole state, sent unit by unit and sharded on arrival: one copy in host memory
        whole = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, weights, options=whole)
        set_optimizer_state_dict(model, inner, optim, options=whole)
    else:
        plain.load_state_dict(weights)
        index = {name: i for i, name in enumerate(order)}
        inner.load_state_dict({"state": {index[n]: s for n, s in optim["state"].items()},
                               "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                                for g in optim["param_groups"]]})
    restored = load_accelerator_state(str(path), [], [], accelerator._schedulers, accelerator._dataloaders,
                                      accelerator.process_index, accelerator.scaler, "cpu")
    if "step" in restored:
        accelerator.step = restored["step"]
