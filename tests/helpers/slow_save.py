"""`train/main.py` with one checkpoint save made slow, for the kill-during-save test (test only).

The save numbered SLOW_SAVE_NUMBER (1 = the first) stops for SLOW_SAVE_SECONDS (default 300)
after the model, optimizer and RNG files are written and before `loop.json` is, and touches
SLOW_SAVE_MARKER so that the test knows when to kill or signal it. Everything else is the real script.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.saving import checkpoint  # noqa: E402
from train.fronts.script import main  # noqa: E402

number, marker = int(os.environ["SLOW_SAVE_NUMBER"]), Path(os.environ["SLOW_SAVE_MARKER"])
seconds = float(os.environ.get("SLOW_SAVE_SECONDS", "300"))
saves = 0
real_model_shapes = checkpoint.model_shapes


def slow_model_shapes(model):  # called once per save, by the main process, just before loop.json
    global saves
    saves += 1
    if saves == number:
        marker.write_text(str(saves))
        time.sleep(seconds)
    return real_model_shapes(model)


checkpoint.model_shapes = slow_model_shapes
sys.exit(main())
