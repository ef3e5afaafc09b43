"""The learning-rate finder: `python -m train.lr_find --config C ...` (see `train.tuning.lr_find`)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (launch/cpu2.sh train/lr_find.py on N processes): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.tuning.lr_find import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
