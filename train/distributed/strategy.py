"""The strategy: how the model is spread over the processes. `ddp` (the default) keeps a whole copy
of the model and its optimizer state on every process and averages the gradients; `fsdp` shards
each parameter, its gradient and its optimizer state over the processes (FSDP2, `fully_shard`,
through Accelerate's own plugin), gathering a unit's parameters only while it computes.

What the `fsdp` settings mean (the names Accelerate's plugin uses):
- `wrap`: which modules become their own sharded unit (gathered and freed on their own, so that at
  most one unit's full parameters are in memory beside the shards): `auto` (a `transformers`
  model's own layer classes, its `_no_split_modules`, else by size), `size` (the classes of the
  modules with more than `min_num_params` parameters not already in a smaller unit, torch's size
  rule: every module of those classes is a unit), or a list of class names. The root module is
  always a unit: what no smaller unit holds is sharded with it.
- `reshard_after_forward`: free the gathered parameters after the forward pass (gathered again for
  the backward): less memory, one more all-gather per unit.
- `activation_checkpointing`: recompute each unit's activations in the backward pass.
- `cpu_offload`: keep the shards (and the optimizer's step) on the CPU.
Mixed precision follows `mixed_precision` (Accelerate's policy: parameters cast for compute,
gradients reduced in the same type).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from train.config.schema import FsdpConfig

FSDP_DEFAULTS = dataclasses.asdict(FsdpConfig())  # the config's defaults, for the class front too


def fsdp_plugin(settings: Optional[dict] = None):
    """Accelerate's FSDP2 plugin for these `fsdp` settings (the wrap policy is chosen with the model,
    `choose_units`)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    s = {**FSDP_DEFAULTS, **(settings or {})}
    unknown = sorted(set(s) - set(FSDP_DEFAULTS))
    if unknown:
        from train.base.errors import ConfigError
        from train.base.text import did_you_mean

        raise ConfigError(f"unknown fsdp setting '{unknown[0]}'; "
                          + did_you_mean(unknown[0], list(FSDP_DEFAULTS),
                                         otherwise=f"the settings are: {', '.join(FSDP_DEFAULTS)}"))
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=bool(s["reshard_after_forward"]),
        activation_checkpointing=bool(s["activation_checkpointing"]), cpu_offload=bool(s["cpu_offload"]),
        state_dict_type="SHARDED_STATE_DICT", min_num_params=int(s["min_num_params"]))
    plugin.wrap = s["wrap"]  # read by choose_units once the model is known
    return plugin


def take_fsdp_on_cpu_ranks(accelerator, plugin) -> None:
    """Accelerate (1.15) turns a run with an FSDP plugin into `DistributedType.FSDP` only for
    GPU-class processes; CPU (gloo) ranks come up `MULTI_CPU` with the plugin dropped, and the model
    would be wrapped in DDP without a word. Its FSDP2 code itself runs on CPU ranks (exact against an
    unsharded reference), so the state is switched here as Accelerate's state.py does for a GPU. The
    one place this is done; `tests/distributed/test_strategy.py` fails once Accelerate does it itself."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if plugin is None:
        return
    accelerator.fsdp_asked = plugin  # strategy=fsdp was asked for, sharded or not (one process)
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    state = accelerator.state
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def choose_units(accelerator, model: torch.nn.Module) -> None:
    """Set the plugin's wrap policy for `model` (before `prepare`); a model that cannot be sharded, or
    class names it has no module of, are a `ConfigError`. The units are always given to Accelerate as
    class names (its transformer policy): its size policy counts a module's nested parameters too and
    shards containers with no forward of their own (a `ModuleList` of layers fails in `fully_shard`), so
    a size rule is turned into the classes of the modules it picks here."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from train.base.errors import ConfigError

    plugin = getattr(accelerator, "fsdp_asked", None)
    if plugin is None:
        return
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"strategy=fsdp: {type(model).__name__} has no trainable parameters to shard; "
                          f"use strategy=ddp")
    classes = {type(m).__name__ for m in model.modules()}
    wrap = getattr(plugin, "wrap", ["auto"])
    wrap = list(wrap) if isinstance(wrap, (list, tuple)) else [wrap]
    by_size = wrap == ["size"]
    if wrap in ([], ["auto"]):  # a transformers model's own layer classes, where it names them
        names = [n for n in (getattr(model, "_no_split_modules", None) or []) if n in classes]
        by_size = not names
    elif not by_size:
        missing = [name for name in wrap if name not in classes]
        if missing:
            raise ConfigError(f"fsdp.wrap names {', '.join(missing)}, which {type(model).__name__} has no module "
                              f"of; its classes: {', '.join(sorted(classes))}; or fsdp.wrap=auto")
        names = wrap
    if by_size:
        names = classes_over(model, plugin.min_num_params)
    plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = transformer_auto_wrap_policy, names
    size_rule = f"more than {plugin.min_num_params:,} parameters"
    if not names:
        plugin.units = f"the whole model as one: no module has {size_rule}" if by_size else "the whole model as one"
    else:
        plugin.units = (f"each {' / '.join(names)}" + (f", the classes of the modules of {size_rule}" if by_size else "")
                        + "; the rest in the root")
    if is_sharded(accelerator):
        accelerator.state.fsdp_plugin.auto_wrap_policy = plugin.auto_wrap_policy
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = names


def classes_over(model: torch.nn.Module, min_num_params: int) -> list[str]:
    """The classes of the modules a size rule makes units (torch's FSDP1 rule): bottom up, a module with
    a forward of its own whose parameters not already in a smaller unit number more than
    `min_num_params`; the root is a unit anyway."""
    unit_of: dict[int, int] = {}  # id(module) -> its parameters not in a smaller unit

    def left(module: torch.nn.Module) -> int:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        return own + sum(unit_of[id(child)] for child in module.children())

    picked: list[str] = []
    for module in reversed(list(model.modules())):  # children before their parents
        count = left(module)
        has_forward = type(module).forward is not torch.nn.Module.forward
        if module is not model and has_forward and count > min_num_params:
            picked.append(type(module).__name__)
            count = 0
        unit_of[id(module)] = count
    return sorted(set(picked), key=picked.index)


def sharding_note(accelerator, model: torch.nn.Module) -> Optional[str]:
    """One line for the plan: what is sharded and how much of it each process holds."""
    if getattr(accelerator, "fsdp_asked", None) is None:
        return None
    if not is_sharded(accelerator):
        return "strategy: fsdp on one process: nothing to shard, the model is whole"
    from torch.distributed.fsdp import FSDPModule, fully_shard

    params = list(model.parameters())
    shards = [p.to_local() if hasattr(p, "to_local") else p for p in params]  # DTensors: this process's part
    total, local = sum(p.numel() for p in params), sum(s.numel() for s in shards)
    size = sum(s.numel() * s.element_size() for s in shards)
    # modules sharded together (Accelerate groups a transformers model's embeddings and head) share a state
    units = len({id(fully_shard.state(m)) for m in model.modules() if isinstance(m, FSDPModule)})
    how = getattr(accelerator.fsdp_asked, "units", "")
    return (f"strategy: fsdp (FSDP2) over {accelerator.num_processes} processes, {units} sharded unit(s) ({how}); "
            f"this process holds {local:,} of {total:,} parameters ({_in_words(size)}), and "
            f"their gradients and optimizer state likewise")


def _in_words(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KB"


def whole_weights(model: torch.nn.Module) -> dict:
    """The model's weights as whole tensors on the CPU, for a copy kept aside (early stopping's best):
    a sharded model's gathered on the main process (collective: every process calls it; the others
    get {}), else its own `state_dict`."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def put_whole_weights(model: torch.nn.Module, weights: dict, from_main: bool = True) -> None:
    """Load `whole_weights`' copy back (collective for a sharded model: the main process's copy is
    sent to the others where `from_main`, else every process holds it)."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        model.load_state_dict(weights)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_main))

