"""After training: the weights out of a run, and back into a model.

A run with an output folder writes `model.safetensors` (the model's own key names: no wrapper,
DDP or `torch.compile` prefix), `hf/` for a `transformers` model (`save_pretrained`, loadable by
its class's `from_pretrained`), and, for a config run, `run.json`: the folder it was started from
and what rebuilding its model needs beyond `config.yaml`. So:

    model = train.load_model("runs/digits")           # from any working folder
    train.load_weights(my_net, "runs/mine")           # a run folder, a checkpoint, or a .safetensors file
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from .errors import UserError

WEIGHTS, ORIGIN, HF_DIR, MERGED_DIR = "model.safetensors", "run.json", "hf", "hf-merged"
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


def write_weights(accelerator, model, out: Path, merged: bool = False) -> list[str]:
    """`model.safetensors` (and `hf/` for a model with `save_pretrained`: a `transformers` model, or
    a `peft` model's adapter; with `merged`, `hf-merged/` too: the adapters merged into the weights)
    in `out`, written by the main process atomically; every process takes part in collecting the
    state (sharded models gather it). Returns the names written."""
    from safetensors.torch import save_file

    from .adapters import is_adapted, merged_copy
    from .devices import write_on_main
    from .files import atomic_write

    state = accelerator.get_state_dict(model)
    write_on_main(accelerator, lambda: atomic_write(out / WEIGHTS, lambda tmp: save_file(plain_names(state), tmp)),
                  out / WEIGHTS)
    written = [WEIGHTS]
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    adapted = is_adapted(plain)
    if hasattr(plain, "save_pretrained") and hasattr(plain, "config"):  # a transformers model, or peft's
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
    from .devices import write_on_main
    from .files import atomic_write_text

    record = {"cwd": os.getcwd(), **facts}
    write_on_main(accelerator, lambda: atomic_write_text(out / ORIGIN, json.dumps(record, indent=2) + "\n"),
                  out / ORIGIN)


def weights_file(path, checkpoint: Optional[str] = None) -> Path:
    """The weights file `path` names: a `.safetensors` file, a checkpoint folder, or a run folder
    (its final `model.safetensors`, or with `checkpoint` one of its checkpoints: `best`, `latest`
    or `step-00000100`)."""
    path = Path(path)
    if checkpoint is not None:
        folder = path / "checkpoints" / checkpoint
        if folder.is_file():  # `latest` and `best` are pointers: one line naming a checkpoint folder
            folder = path / "checkpoints" / folder.read_text().strip()
        path = folder
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise UserError(f"no weights at '{path}'; give a run folder (with {WEIGHTS}), a checkpoint folder or a "
                        f".safetensors file")
    return path


def load_weights(module: torch.nn.Module, path, checkpoint: Optional[str] = None) -> torch.nn.Module:
    """Load a run's weights into `module` (strictly: every key must match) and return it."""
    from safetensors.torch import load_file

    file = weights_file(path, checkpoint)
    state = plain_names(load_file(str(file)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = "; ".join(p for p in (f"missing {', '.join(missing[:3])}" if missing else "",
                                     f"unexpected {', '.join(unexpected[:3])}" if unexpected else "") if p)
        raise UserError(f"the weights in '{file}' do not fit {type(module).__name__} ({what}); build the model the "
                        f"run trained")
    return module


@contextmanager
def working_folder(folder: Optional[str]):
    """Run the body in the run's own working folder (its import paths and data paths are relative
    to it), importable, then come back."""
    import sys

    if not folder or not Path(folder).is_dir():
        yield
        return
    here = os.getcwd()
    sys.path.insert(0, folder)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)
        sys.path.remove(folder)


def run_config(run_dir, overrides=()):
    """(config with `overrides`, origin) of a config run's folder."""
    from .configfile import load_config

    run_dir = Path(run_dir).resolve()  # before moving into the run's own working folder
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' has no config.yaml: it is not the folder of a config run (for a class-front "
                        f"run, build the model and use Model.load_weights or train.load_weights)")
    origin = json.loads((run_dir / ORIGIN).read_text()) if (run_dir / ORIGIN).is_file() else {}
    with working_folder(origin.get("cwd")):
        cfg = load_config(str(run_dir / "config.yaml"), overrides)
    return cfg, origin


def load_model(run_dir, checkpoint: Optional[str] = None) -> torch.nn.Module:
    """The trained model of a config run (`python train/main.py` or a wrapper), from any working
    folder: rebuilt from its `config.yaml` (imported from the folder the run started in), with the
    weights of `model.safetensors` or of a named checkpoint (`best`, `latest`, `step-...`). In
    eval mode, on the CPU."""
    from .build import build_model

    cfg, origin = run_config(run_dir)
    with working_folder(origin.get("cwd")):
        model = build_model(cfg, origin.get("in_channels"))
    return load_weights(model, Path(run_dir).resolve(), checkpoint).eval()
