"""Callbacks as a public interface: named in a config, hooks that receive their data, a callback
for the main process alone and one for every process, a Keras-style object, and callback state
that survives a killed rank and the restart, on two processes. Kill points are seeded."""

import json
import os
import signal

import pytest

from conftest import TEST_SEED, MNIST, ROOT, flat, latest_step, rank_processes, start_process, wait_for

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

SMOKE = ["epochs=2", "data.train_size=4096", "data.val_size=1001", f"data.path={MNIST}", "checkpoint.every_steps=3",
         "progress=false"]


def callbacks(folder) -> str:
    return ("callbacks=[{name: 'tests.helpers.cbs:Writer', args: {prefix: ep}}, "
            f"{{name: 'tests.helpers.cbs:EveryProcess', args: {{folder: '{folder}'}}}}, tests.helpers.cbs:KerasStyle]")


def two(out, folder):
    return start_process([str(ROOT / "launch" / "cpu2.sh"), *SMOKE, callbacks(folder), f"output_dir={out}"],
                         dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


def test_config_callbacks_on_two_processes_and_their_state_across_a_restart(tmp_path, rng):
    whole = two(tmp_path / "whole", tmp_path / "every-whole")
    log, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, log
    # the main-process-only callback wrote once per epoch, with the row and the step it was given
    written = [json.loads((tmp_path / "whole" / f"ep{e}.json").read_text()) for e in (1, 2)]
    assert [w["seen"] for w in written] == [1, 2] and written[1]["step"] == 32 and written[1]["val_loss"] > 0
    # the every-process callback ran on both, and knew which it was
    ranks = {p.name: json.loads(p.read_text()) for p in (tmp_path / "every-whole").glob("*.json")}
    assert ranks == {"rank0-of-2.json": {"batches": 32, "main": True}, "rank1-of-2.json": {"batches": 32, "main": False}}
    assert log.count("keras-style epoch 2: loss") == 1  # train.print: once per job, not per process

    target = rng.randint(17, 21)  # early in epoch 2 (16 steps an epoch per process)
    out = tmp_path / "killed"
    proc = two(out, tmp_path / "every-killed")
    wait_for(lambda: latest_step(out) >= target and len(rank_processes(proc.pid, "main.py")) == 2, proc,
             f"step {target} (TEST_SEED={TEST_SEED})")
    os.kill(rank_processes(proc.pid, "main.py")[1], signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "(restart 1 of 3)" in flat(log), f"TEST_SEED={TEST_SEED}\n{log}"
    assert json.loads((out / "ep2.json").read_text())["seen"] == 2, f"TEST_SEED={TEST_SEED}"  # restored from the checkpoint
    again = {p.name: json.loads(p.read_text())["batches"] for p in (tmp_path / "every-killed").glob("*.json")}
    assert again == {"rank0-of-2.json": 32, "rank1-of-2.json": 32}, f"TEST_SEED={TEST_SEED}"
