"""`train/main.py` with one background checkpoint write held on disk's side (test only).

The background write numbered HOLD_WRITE_NUMBER (1 = the first) touches HOLD_WRITE_MARKER and then
waits (up to 300 s) before copying anything to disk; every save appends the optimizer step it was
called at to HOLD_WRITE_MARKER.saves, so that the test sees training go on while the write is held.
Everything else is the real script.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.saving import background, checkpoint  # noqa: E402
from train.fronts.script import main  # noqa: E402

number, marker = int(os.environ["HOLD_WRITE_NUMBER"]), Path(os.environ["HOLD_WRITE_MARKER"])
writes = 0
real_copy, real_save = background.BackgroundWrite._copy, checkpoint.Checkpoint.save


def held_copy(self):
    global writes
    writes += 1
    if writes == number:
        marker.write_text(self.tmp.name)
        time.sleep(300)
    return real_copy(self)


def logged_save(self, *args, **kwargs):
    with open(f"{marker}.saves", "a") as f:
        f.write(f"{self.loop.step}\n")
    return real_save(self, *args, **kwargs)


background.BackgroundWrite._copy = held_copy
checkpoint.Checkpoint.save = logged_save
sys.exit(main())
