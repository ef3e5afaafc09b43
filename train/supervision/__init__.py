"""The process above the launcher (`train/supervisor.py`): restarts after a crash, stall
detection, exit codes, one line per ending, and the training processes' reports to it. It imports
only `train.base` and never torch, so that it starts in a fraction of a second."""
