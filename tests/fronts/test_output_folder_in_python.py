"""What the README promises of the Python fronts given an `output_dir` (tests/helpers/user_script.py,
a model and data the project has never seen): the function front (`train_model`) checkpoints,
resumes exactly after SIGKILL, saves on Ctrl-C with exit 130 and resumes again; both fronts end a
NaN loss with one line and exit 3, keeping the last good checkpoint; the class front ends a full
disk with exit 74 and resumes once there is room; its trackers log what history.csv holds."""

import os
import re
import signal
import subprocess

import pandas as pd
import pytest

from conftest import (PYTHON, ROOT, TEST_SEED, assert_same_run, flat, kill_group, latest_step, run_one,
                      start_process, tensorboard_scalars, wait_for)

pytestmark = pytest.mark.slow  # real processes, full runs

SCRIPT = ROOT / "tests" / "helpers" / "user_script.py"
ARGS = ["--size", "4096", "--every", "4"]  # 64 optimizer steps an epoch, a checkpoint every 4


def command(folder, *args):
    return [PYTHON, str(SCRIPT), str(folder), *ARGS, *map(str, args)]


def test_the_function_front_resumes_after_sigkill_and_ctrl_c_exactly(tmp_path, rng):
    reference = tmp_path / "reference"
    done = run_one(SCRIPT, reference, *ARGS, "--front", "function")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (reference / "checkpoints" / "latest").read_text().strip() == "step-00000128"
    assert {"history.csv", "model.safetensors", "checkpoints"} <= {p.name for p in reference.iterdir()}

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kill_at = rng.randrange(8, 48, 4)  # a checkpoint of epoch 1, far from its end
    where = f"(SIGKILL after step {kill_at}; TEST_SEED={TEST_SEED})"
    proc = start_process(command(out, "--front", "function"), env)
    wait_for(lambda: latest_step(out) >= kill_at, proc, f"step {kill_at} {where}")
    kill_group(proc)
    killed = latest_step(out)
    assert killed < 64, f"epoch 1 ended before the kill {where}"

    stop_at = rng.randrange(76, 112, 4)  # then Ctrl-C in epoch 2, after the resume
    where += f" (SIGINT after step {stop_at})"
    proc = start_process(command(out, "--front", "function"), env)
    wait_for(lambda: latest_step(out) >= stop_at, proc, f"step {stop_at} {where}")
    proc.send_signal(signal.SIGINT)
    said, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, said[-3000:]
    assert f"resuming from {out}/checkpoints/step-{killed:08d} (epoch 1, batch {killed}" in flat(said), where
    saved = latest_step(out)
    assert saved >= stop_at and saved < 128, where  # the interrupt's own checkpoint, in epoch 2
    assert re.search(rf"interrupted at epoch 2 batch {saved - 64}: saving a checkpoint; run the same command to "
                     r"resume", flat(said)), said[-3000:]
    assert "Traceback" not in said

    again = run_one(SCRIPT, out, *ARGS, "--front", "function")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {out}/checkpoints/step-{saved:08d} (epoch 2, batch {saved - 64}" in flat(again.stdout)
    assert_same_run(out, reference, context=where)


@pytest.mark.parametrize("front", ["class", "function"])
def test_a_nan_loss_ends_a_python_front_with_one_line_and_exit_3(tmp_path, front):
    out = tmp_path / "out"
    done = run_one(SCRIPT, out, *ARGS, "--front", front, "--nan-at", 10)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("error: the training loss became NaN or infinite at epoch 1 batch 10; "), lines
    assert lines[0].endswith(f"the last good checkpoint is {out}/checkpoints/step-00000008 (latest)"), lines
    assert latest_step(out) == 8 and not (out / "history.csv").exists() and not (out / "model.safetensors").exists()


def test_a_full_disk_ends_the_class_front_with_exit_74_and_a_rerun_with_room_resumes(small_disk, tmp_path):
    wide = ["--hidden", "6000", "--epochs", "1", "--size", "1024"]  # 0.8 MB a checkpoint: the second does not fit
    reference = tmp_path / "reference"
    done = run_one(SCRIPT, reference, *ARGS, *wide)
    assert done.returncode == 0, done.stdout + done.stderr
    out = small_disk / "out"
    full = run_one(SCRIPT, out, *ARGS, *wide)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 74 and len(lines) == 1, full.stdout + full.stderr
    assert re.fullmatch(rf"error: could not save checkpoint step-00000008 to {out}/checkpoints/ \(No space left on "
                        rf"device[^;]*\); [\d.]+ MB free; make room and run the same command again to resume; the last "
                        rf"good checkpoint is {out}/checkpoints/step-00000004 \(latest\)", lines[0]), lines
    assert not list((out / "checkpoints").glob(".tmp-*")), "the partial save was left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # room made
    again = run_one(SCRIPT, out, *ARGS, *wide)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {out}/checkpoints/step-00000004" in flat(again.stdout)
    assert_same_run(out, reference, epochs=1)


def test_the_class_fronts_tensorboard_logs_what_history_csv_holds(tmp_path):
    out = tmp_path / "out"
    done = run_one(SCRIPT, out, *ARGS, "--trackers", "tensorboard")
    assert done.returncode == 0, done.stdout + done.stderr
    scalars = tensorboard_scalars(out / "tensorboard")
    history = pd.read_csv(out / "history.csv")
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [step for step, _ in scalars[column]] == [64, 128], column  # each epoch's end
        assert [value for _, value in scalars[column]] == pytest.approx(history[column].tolist(), rel=1e-6), column
