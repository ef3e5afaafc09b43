"""The supervisor the launch wrappers run their launcher under (see `train.supervision.supervisor`).
It imports no torch."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python train/supervisor.py ...): import the package, not the files beside it
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.supervision.supervisor import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
