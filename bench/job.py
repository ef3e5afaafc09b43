"""The main job (`train/main.py`) with a probe, for the benchmark: run it as the script would be run
(`python bench/job.py OUT.json [key=value ...]`, or under `accelerate launch`). Each process
writes `OUT.json.rank<i>` with the wall time of its first optimizer step, its peak RSS, and the
history's samples/s. With `BENCH_STOP_AFTER_FIRST_STEP=1` it exits right after the first step."""

import os
import time

STARTED = time.time()  # noqa: E402 — as early as this process can read the clock

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.fronts import script  # noqa: E402
from train.engine.events import Callback  # noqa: E402
from train.service.run import Run  # noqa: E402


class Probe(Callback):
    def __init__(self, path: str):
        self.path, self.first_step = path, None

    def write(self, rank, **extra):
        record = dict(rank=rank, started=STARTED, first_step=self.first_step,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra)
        Path(f"{self.path}.rank{rank}").write_text(json.dumps(record))

    def on_train_batch_end(self, run):
        if self.first_step is None:
            self.first_step = time.time()
            if os.environ.get("BENCH_STOP_AFTER_FIRST_STEP") == "1":
                self.write(run.process_index)
                os._exit(0)

    def on_train_end(self, logs, run):
        self.write(run.process_index, samples_per_s=float(logs["samples_per_s"]))


if __name__ == "__main__":
    out, args = sys.argv[1], sys.argv[2:]
    # Run.fit is what every front ends in (the script calls it)
    run_fit = Run.fit
    Run.fit = lambda self, epochs, train, val=None, callbacks=(): run_fit(self, epochs, train, val,
                                                                          [*callbacks, Probe(out)])
    sys.exit(script.main(args))
