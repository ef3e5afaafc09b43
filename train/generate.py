"""Text from a trained language model: `python -m train.generate RUN_DIR "prompt" ...` (see `train.fronts.generate`)."""

import sys

from train.fronts.generate import main

if __name__ == "__main__":
    sys.exit(main())
