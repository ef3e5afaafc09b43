"""The global random number generators of one process, captured and put back as a whole.

Python's, NumPy's and torch's (CPU and every CUDA device): what dropout, augmentations and data
shuffling draw from. Used to continue an interrupted epoch with the very draws it would have made,
and to run a check without drawing anything.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_untouched():
    """Whatever runs inside leaves every generator as it found it."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)
