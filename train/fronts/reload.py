"""A trained config run back as a model, from any working folder: rebuilt from its `config.yaml`
(importing the user's code from the folder the run was started in, as `run.json` records) with the
weights of its `model.safetensors` or of one of its checkpoints.

    model = train.load_model("runs/digits")           # from any working folder
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from train.base.errors import UserError
from train.saving.export import ORIGIN, load_weights


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
    from train.config.loading import load_config

    run_dir = Path(run_dir).resolve()  # before moving into the run's own working folder
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' has no config.yaml: it is not the folder of a config run (for a class-front "
                        f"run, build the model and use Model.load_weights or train.load_weights)")
    origin = json.loads((run_dir / ORIGIN).read_text()) if (run_dir / ORIGIN).is_file() else {}
    with working_folder(origin.get("cwd")):
        cfg = load_config(str(run_dir / "config.yaml"), overrides)
    return cfg, origin


def load_model(run_dir, checkpoint: Optional[str] = None, averaged: bool = True) -> torch.nn.Module:
    """The trained model of a config run (`python train/main.py` or a wrapper), from any working
    folder: rebuilt from its `config.yaml` (imported from the folder the run started in), with the
    weights of `model.safetensors` or of a named checkpoint (`best`, `latest`, `step-...`). In
    eval mode, on the CPU. A run that averaged its weights (`ema`) gives its averages (said in one
    line); `averaged=False` the trained weights (`model_raw.safetensors`, or the checkpoint's own)."""
    from train.base.paths import RAW_WEIGHTS
    from train.fronts.building import build_model
    from train.saving.export import averaged_weights

    cfg, origin = run_config(run_dir)
    with working_folder(origin.get("cwd")):
        model = build_model(cfg, origin.get("in_channels"))
    run_dir = Path(run_dir).resolve()
    if not cfg.ema.decay:
        return load_weights(model, run_dir, checkpoint).eval()
    if not averaged:
        return load_weights(model, run_dir / RAW_WEIGHTS if checkpoint is None else run_dir, checkpoint).eval()
    load_weights(model, run_dir, checkpoint)  # every weight, then the averaged ones over them
    model.load_state_dict(averaged_weights(run_dir, checkpoint), strict=False)
    print(f"load_model: the averaged weights (ema) of {run_dir}{f' ({checkpoint})' if checkpoint else ''}; "
          f"averaged=False (predict: --raw) for the trained ones", flush=True)
    return model.eval()
