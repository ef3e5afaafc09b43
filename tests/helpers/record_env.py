"""A callback that records the GPUs a process was given: <output_dir>/cuda_visible_devices."""

import os
from pathlib import Path

import train


class RecordEnv(train.Callback):
    main_process_only = True

    def on_train_begin(self, run):
        (Path(run.output_dir) / "cuda_visible_devices").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
