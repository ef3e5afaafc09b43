"""Only the main process prints: the libraries a run uses, too.

The service's own lines are printed by the main process alone, but the libraries every process
imports speak for themselves: transformers' "Loading weights" progress bar and its warnings,
datasets' progress bars, Python warnings. Since every process runs the same code, the main
process shows each of them once; the others are kept quiet (errors still show)."""

from __future__ import annotations

import logging
import sys
import warnings


def only_main_prints(is_main_process: bool) -> None:
    """Quiet the libraries' progress bars, info and warnings on every process but the main one.
    Libraries imported later are quieted too (their settings are read from the environment)."""
    if is_main_process:
        return
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["DATASETS_VERBOSITY"] = "error"
    os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore")  # the main process shows the same warning of the same code
    for name in ("transformers", "datasets", "peft", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already: its settings were read
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging

        ds_logging.set_verbosity_error()
        ds_logging.disable_progress_bar()
