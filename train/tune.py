"""Loader tuning: `python -m train.tune [--config FILE] [key=value ...]` (see `train.data.loader_tuning`)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python train/tune.py): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.data.loader_tuning import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
