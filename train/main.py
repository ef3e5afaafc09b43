"""The script front: `accelerate launch train/main.py [--config FILE] [key=value ...]` (see
`train.fronts.script`)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python train/main.py, accelerate launch train/main.py): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.fronts.script import run_as_script  # noqa: E402

if __name__ == "__main__":
    run_as_script()
