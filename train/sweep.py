"""A search over real runs: `python -m train.sweep --config C --space S ...` (see `train.tuning.search`)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python train/sweep.py): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.tuning.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
