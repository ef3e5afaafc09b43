"""Every process records that it finished training, as train/main.py does; then rank 1 hangs in its
teardown (a stopped process, a stuck file system) while rank 0 exits."""

import os
import time

import train  # noqa: F401  (records this process with the supervisor)
from train.supervision.reports import record_exit, record_start

record_start(os.environ.get("TRAIN_OUTPUT_DIR", "lingers"))
record_exit(0, "finished")
if os.environ.get("RANK") == "1":
    time.sleep(3600)
