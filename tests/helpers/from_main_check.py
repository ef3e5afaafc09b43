"""Under 2 processes: an unexpected error on the main process inside `from_main` reaches every
process as the same `RunError`; each rank writes what it caught to OUT/rank<i>.txt."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.base.errors import RunError  # noqa: E402
from train.engine.devices import from_main, make_accelerator  # noqa: E402

out = Path(sys.argv[1])
accelerator = make_accelerator()
try:
    from_main(accelerator, lambda: 1 / 0)  # only the main process runs it
    caught = "nothing"
except RunError as e:
    caught = f"{type(e).__name__}: {e} (same on every process: {e.same_on_every_process})"
(out / f"rank{accelerator.process_index}.txt").write_text(caught)
accelerator.wait_for_everyone()
