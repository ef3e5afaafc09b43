"""history.png's drawing helper, `python -m train.plots` (started by the run; see `train.callbacks.plots`)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python train/plots.py): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.callbacks.plots import serve  # noqa: E402

if __name__ == "__main__":
    serve()
