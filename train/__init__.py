"""A PyTorch training loop on Hugging Face Accelerate, with three fronts over one loop:
the script (`accelerate launch train/main.py`), functions (`train_step`, `valid_step`,
`train_model`) and a Keras-like class (`Model`)."""

from .api import Model
from .config import Config, load_config
from .errors import ConfigError, DataError, UserError
from .functional import train_model, train_step, valid_step
from .loop import Loop, make_accelerator

__all__ = ["Model", "Loop", "make_accelerator", "train_step", "valid_step", "train_model",
           "Config", "load_config", "UserError", "ConfigError", "DataError"]
