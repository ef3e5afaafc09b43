"""Predict with a trained run: `python -m train.predict RUN_DIR ...` (see `train.fronts.predict`)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (launch/cpu2.sh train/predict.py RUN_DIR on N processes): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.fronts.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
