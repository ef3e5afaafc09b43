"""A PyTorch training loop on Hugging Face Accelerate, with three fronts over one loop:
the script (`accelerate launch train/main.py`), functions (`train_step`, `valid_step`,
`train_model`) and a Keras-like class (`Model`), all driving one `Run`.

The names below are imported on first use, so that `import train.<module>` of a light module
(the supervisor, the plot worker, the config) does not pay for torch.
"""

import importlib
import os

if os.environ.get("TRAIN_SUPERVISOR_DIR"):  # under launch/*.sh: tell the supervisor this process lives
    from .supervised import watch_process

    watch_process()

_NAMES = {
    "Model": "api", "Run": "run", "RunOptions": "options", "Loop": "loop", "make_accelerator": "devices",
    "train_step": "functional", "valid_step": "functional", "train_model": "functional",
    "Config": "config", "load_config": "configfile", "UserError": "errors", "ConfigError": "errors",
    "DataError": "errors", "load_model": "export", "load_weights": "export", "Callback": "callbacks",
    "RunView": "callbacks",
}
__all__ = [*_NAMES, "seed_everything", "print", "on_main_process"]


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    try:  # train.metrics, train.models, ...: the submodules
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise  # a submodule that exists but cannot import what it needs
        raise AttributeError(f"module 'train' has no attribute '{name}'") from None


def print(*args, **kwargs) -> None:
    """`print` once per job: on the main process only (see `train.callbacks.print_once`)."""
    from .callbacks import print_once

    print_once(*args, **kwargs)


def on_main_process(cls):
    """Class decorator: the callback runs on the main process only (`main_process_only = True`)."""
    cls.main_process_only = True
    return cls


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): call it before building a model for the same
    initial weights on every run. `fit(seed=...)` seeds the training itself (data order, dropout)."""
    from accelerate.utils import set_seed

    set_seed(seed)
