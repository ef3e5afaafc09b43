"""A PyTorch training loop on Hugging Face Accelerate, with three fronts over one loop:
the script (`accelerate launch train/main.py`), functions (`train_step`, `valid_step`,
`train_model`) and a Keras-like class (`Model`), all driving one `Run`."""

from .api import Model
from .config import Config, load_config
from .errors import ConfigError, DataError, UserError
from .functional import train_model, train_step, valid_step
from .loop import Loop
from .devices import make_accelerator
from .options import RunOptions
from .run import Run


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): call it before building a model for the same
    initial weights on every run. `fit(seed=...)` seeds the training itself (data order, dropout)."""
    from accelerate.utils import set_seed

    set_seed(seed)


__all__ = ["Model", "Run", "RunOptions", "Loop", "make_accelerator", "train_step", "valid_step", "train_model",
           "seed_everything", "Config", "load_config", "UserError", "ConfigError", "DataError"]
