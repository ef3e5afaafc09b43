"""After training: the weights out of a run, and back into a model.

A run with an output folder writes `model.safetensors` (the model's own key names: no wrapper,
DDP or `torch.compile` prefix), `hf/` for a `transformers` model (`save_pretrained`, loadable by
its class's `from_pretrained`), and, for a config run, `run.json`: the folder it was started from
and what rebuilding its model needs beyond `config.yaml` (`train.fronts.reload` rebuilds it).

    train.load_weights(my_net, "runs/mine")           # a run folder, a checkpoint, or a .safetensors file
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from train.base.errors import UserError
from train.base.files import pointer_target
from train.base.paths import CHECKPOINTS, RAW_WEIGHTS, SHARDED_MODEL, WEIGHTS

ORIGIN, HF_DIR, MERGED_DIR = "run.json", "hf", "hf-merged"
PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DistributedDataParallel's


def plain_names(state: dict) -> dict:
    """A state dict with the wrappers' prefixes taken off its keys, on the CPU, unshared (tied
    weights get a copy each: safetensors refuses tensors that share memory)."""
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def exported_folders(plain, merged: bool = False) -> list[str]:
    """The Hugging Face folders `write_weights` writes beside the weights for this unwrapped model."""
    from train.engine.adapters import is_adapted

    if not (hasattr(plain, "save_pretrained") and hasattr(plain, "config")):  # a transformers model, or peft's
        return []
    return [f"{HF_DIR}/"] + ([f"{MERGED_DIR}/"] if merged and is_adapted(plain) else [])


def write_weights(accelerator, model, out: Path, merged: bool = False, name: str = WEIGHTS,
                  folders: bool = True) -> list[str]:
    """`model.safetensors` (or `name`; and with `folders`, `hf/` for a model with `save_pretrained`: a
    `transformers` model, or a `peft` model's adapter; with `merged`, `hf-merged/` too: the adapters
    merged into the weights) in `out`, written by the main process atomically; every process takes
    part in collecting the state (sharded models gather it). Returns the names written."""
    from safetensors.torch import save_file

    from train.engine.adapters import is_adapted, merged_copy
    from train.engine.devices import write_on_main
    from train.base.files import atomic_write

    state = accelerator.get_state_dict(model)
    write_on_main(accelerator, lambda: atomic_write(out / name, lambda tmp: save_file(plain_names(state), tmp)),
                  out / name)
    written = [name]
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    adapted = is_adapted(plain)
    if folders and exported_folders(plain):
        def export(folder: str, save):
            import shutil
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=out))
            with quiet_transformers():  # no progress bar for one shard
                save(tmp)
            shutil.rmtree(out / folder, ignore_errors=True)
            os.replace(tmp, out / folder)

        # peft's save_pretrained takes the adapter's weights out of the whole state
        write_on_main(accelerator, lambda: export(HF_DIR, lambda tmp: plain.save_pretrained(
            tmp, state_dict=plain_names(state), safe_serialization=True)), out / HF_DIR)
        written.append(f"{HF_DIR}/" + (" (the adapter)" if adapted else ""))
        if adapted and merged:
            write_on_main(accelerator, lambda: export(MERGED_DIR, lambda tmp: merged_copy(plain).save_pretrained(
                tmp, safe_serialization=True)), out / MERGED_DIR)
            written.append(f"{MERGED_DIR}/")
    return written


def write_final_weights(accelerator, loop, out: Path, merged: bool = False) -> list[str]:
    """A run's final weights (`write_weights`). With weight averaging (`ema`), the averages are the
    model: `model.safetensors` and `hf/` hold them, since they are what was validated and chosen,
    and `model_raw.safetensors` keeps the trained weights beside them (to train on elsewhere)."""
    raw = []
    if loop.average is not None:
        raw = write_weights(accelerator, loop.model, out, name=RAW_WEIGHTS, folders=False)
    with loop.averaged():
        return write_weights(accelerator, loop.model, out, merged) + raw


@contextmanager
def quiet_transformers():
    """transformers' progress bars off (it draws one per saved shard, even for one), then back."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def write_origin(accelerator, out: Path, **facts) -> None:
    """`run.json`: the working folder the run started in (its config's relative import paths and
    data paths are relative to it) and `facts` (e.g. a built-in model's input channels)."""
    from train.engine.devices import write_on_main
    from train.base.files import atomic_write_text

    record = {"cwd": os.getcwd(), **facts}
    write_on_main(accelerator, lambda: atomic_write_text(out / ORIGIN, json.dumps(record, indent=2) + "\n"),
                  out / ORIGIN)


def weights_file(path, checkpoint: Optional[str] = None) -> Path:
    """The weights `path` names: a `.safetensors` file, a checkpoint folder (its `model.safetensors`,
    or a sharded run's folder of shards), or a run folder (its final `model.safetensors`, or with
    `checkpoint` one of its checkpoints: `best`, `latest` or `step-00000100`)."""
    path = Path(path) if checkpoint is None else checkpoint_folder(path, checkpoint)
    if path.is_dir():
        sharded = path / SHARDED_MODEL
        path = sharded if not (path / WEIGHTS).is_file() and (sharded / ".metadata").is_file() else path / WEIGHTS
    if not path.exists():
        raise UserError(f"no weights at '{path}'; give a run folder (with {WEIGHTS}), a checkpoint folder or a "
                        f".safetensors file")
    return path


def checkpoint_folder(run_dir, checkpoint: str) -> Path:
    """The folder of a run's checkpoint `best`, `latest` or `step-00000100` (the first two are pointers:
    one line naming a checkpoint folder)."""
    folder = Path(run_dir) / CHECKPOINTS / checkpoint
    return (pointer_target(folder) or folder) if folder.is_file() else folder


def averaged_weights(run_dir, checkpoint: Optional[str] = None) -> dict:
    """A run's weights averaged by `ema`: its model.safetensors, or those a checkpoint holds (beside
    its trained weights, in the parts' file)."""
    from train.saving.storage import CALLBACKS_FILE

    if checkpoint is None:
        return read_weights(weights_file(run_dir))
    parts = checkpoint_folder(run_dir, checkpoint) / CALLBACKS_FILE
    saved = torch.load(parts, weights_only=True, map_location="cpu") if parts.is_file() else {}
    if "ema" not in saved:
        raise UserError(f"checkpoint {checkpoint} of '{run_dir}' holds no averaged weights; load it with averaged=False")
    return saved["ema"]["weights"]


def read_weights(file: Path) -> dict:
    """The tensors of a weights file, or the full weights merged from a sharded checkpoint's shards."""
    from safetensors.torch import load_file

    return merged_shards(file) if file.is_dir() else load_file(str(file))


def merged_shards(folder: Path) -> dict:
    """The full weights of a sharded (`strategy=fsdp`) checkpoint, merged on this one process from every
    process's shards (`train.saving.reshard.read_dcp`); the checkpoint is verified and checked for
    pickles that run code first."""
    from train.saving.reshard import read_dcp
    from train.saving.storage import damage, refuse_unsafe

    reason = damage(folder.parent)
    if reason:
        raise UserError(f"checkpoint {folder.parent} is damaged ({reason}); load another checkpoint")
    refuse_unsafe(folder.parent)
    return read_dcp(folder)["model"]  # Accelerate saves {"model": state}


def load_weights(module: torch.nn.Module, path, checkpoint: Optional[str] = None) -> torch.nn.Module:
    """Load a run's weights into `module` (strictly: every key must match) and return it."""
    file = weights_file(path, checkpoint)
    state = plain_names(read_weights(file))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = "; ".join(p for p in (f"missing {', '.join(missing[:3])}" if missing else "",
                                     f"unexpected {', '.join(unexpected[:3])}" if unexpected else "") if p)
        raise UserError(f"the weights in '{file}' do not fit {type(module).__name__} ({what}); build the model the "
                        f"run trained")
    return module
