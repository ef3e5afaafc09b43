"""Adapters through `peft`: fine-tuning a (pretrained) model by training small added weights while
its own weights stay frozen, and what that means for the rest of the service.

`peft: {method: lora, r, alpha, dropout, target_modules}` wraps the config's model with
`peft.get_peft_model(model, LoraConfig(...))`. A `peft.PeftModel` of your own (the class front) is
handled alike. Its frozen weights never change, so checkpoints leave them out: a checkpoint holds
the adapters' weights (and the optimizer's state of those), and a resume rebuilds the frozen base
as the run was built (the same `pretrained` folder, the same seed) and checks that it is the same
by a fingerprint kept in the checkpoint. The final `model.safetensors` holds the whole model (so
that `train.load_weights` needs nothing else); `hf/` holds the adapter as `peft` saves it
(`PeftModel.from_pretrained(base, "hf")`), and, on request, `hf-merged/` the adapters merged into
the weights (loadable by the base class's `from_pretrained` without peft).
"""

from __future__ import annotations

import sys
import warnings
import zlib

import torch

from train.base.errors import ConfigError, describe


def with_adapters(net: torch.nn.Module, cfg, name: str) -> torch.nn.Module:
    """`net` wrapped with the adapters the `peft` section asks for."""
    try:
        import peft
    except ImportError:
        raise ConfigError("peft.method=lora needs the peft package: pip install peft (or '.[text]')") from None
    try:
        config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                 target_modules=cfg.target_modules, **cfg.args)
        with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself and says so
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
            # peft asks transformers >= 5 for its deprecated `is_gradient_checkpointing`: a warning between
            # two libraries that no setting of the user's can answer
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return peft.get_peft_model(net, config)
    except Exception as e:  # no target modules found, a bad argument: the user's to fix
        raise ConfigError(f"cannot add lora adapters to model '{name}': {describe(e).rstrip('.')}; set peft.target_modules to "
                          f"names of its layers (e.g. [c_attn] for GPT-2, [query, value] for BERT)") from None


def is_adapted(model) -> bool:
    """Whether `model` (unwrapped) is a `peft` model: its base frozen, its adapters trained."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def frozen_names(model: torch.nn.Module) -> set:
    """The names (as `model.state_dict()` has them) of the parameters that do not train."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def frozen_fingerprint(model: torch.nn.Module) -> str:
    """A fingerprint of the frozen weights: their names, shapes and first 256 values each (cheap
    for a large base, and enough to tell another base or another seed)."""
    crc = 0
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            continue
        crc = zlib.crc32(f"{name}{tuple(p.shape)}".encode(), crc)
        crc = zlib.crc32(p.detach().reshape(-1)[:256].to("cpu", torch.float32).numpy().tobytes(), crc)
    return f"{crc:08x}"


def trainable_only(models: list, weights: list, unwrap) -> None:
    """An Accelerate save-state hook: adapted models' frozen weights left out of the checkpoint."""
    for i, model in enumerate(models):
        if is_adapted(unwrap(model)):
            frozen = frozen_names(model)
            weights[i] = {k: v for k, v in weights[i].items() if k not in frozen}


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an adapted model with its adapters merged into its weights (the base class again)."""
    import copy

    return copy.deepcopy(model).merge_and_unload()
