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

from train.distributed.strategy import is_sharded
from train.saving.export import SHARDED_MODEL, WEIGHTS

SHARDED_OPTIMIZER, OPTIMIZER = "optimizer_0", "optimizer.bin"  # Accelerate's names in a checkpoint


def written_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_MODEL).is_dir()


def needs_reshard(accelerator, path: Path) -> bool:
    """Whether the checkpoint at `path` was written in another layout than this run's model has."""
    return written_sharded(path) != is_sharded(accelerator)


def read_dcp(folder: Path) -> dict:
    """A DCP folder read whole on this process (no process group: every shard merged), as Accelerate's
    `merge_fsdp_weights` reads one."""
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
    order = [name_of[id(p)] for group in inner.param_groups for p in group["params"]]  # as the optimizer numbers them
    if written_sharded(path):
        weights = read_dcp(path / SHARDED_MODEL)["model"]
        optim = read_dcp(path / SHARDED_OPTIMIZER)["optimizer"]
    else:
        weights = load_file(str(path / WEIGHTS))
        saved = torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu")
        optim = {"state": {order[i]: s for i, s in saved["state"].items()},
                 "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}
    if is_sharded(accelerator):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        whole = StateDictOptions(full_state_dict=True)  # every process holds the whole state: sharded here
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
