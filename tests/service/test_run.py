"""The run object through the class front: a user's own script (tests/helpers/user_script.py, a
model and data outside `train/`) with an output folder gets what the script front gets: the
artifacts, exact resume after SIGKILL on one and two processes, exit 75 on SIGUSR1, `epochs` as
the run's total, and a seed that makes two runs equal."""

import os
import re
import signal

import pandas as pd
import pytest
import torch

from tests.helpers.small_runs import blobs, small_model

from conftest import (TEST_SEED, PYTHON, ROOT, assert_same_run, flat, kill_group, latest_step, launch_two,
                      run_one, start_process, two_rank_env, wait_for)
from train.engine.history import TIMING_COLUMNS

SCRIPT = ROOT / "tests" / "helpers" / "user_script.py"
ARGS = ["--size", "4096", "--every", "2"]  # 64 batches an epoch on one process, 32 per rank on two
TWO = [str(PYTHON).replace("python", "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = {}
    for processes in (1, 2):
        folder = tmp_path_factory.mktemp(f"user-script-{processes}")
        done = run_one(SCRIPT, folder, *ARGS) if processes == 1 else launch_two(SCRIPT, folder, *ARGS)
        assert done.returncode == 0, done.stdout + done.stderr
        out[processes] = (folder, done.stdout)
    return out


@pytest.mark.slow
def test_a_user_script_writes_what_the_script_writes(uninterrupted):
    folder, stdout = uninterrupted[1]
    assert {p.name for p in folder.iterdir()} == {"history.csv", "history.png", "model.safetensors", "checkpoints"}
    assert (folder / "checkpoints" / "latest").read_text().strip() == "step-00000128"
    assert "plan: Net on 1 process on the CPU, fp32" in stdout
    history = pd.read_csv(folder / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and history["val_accuracy"].iloc[-1] > 0.6  # chance: 1/3
    assert history["lr"].tolist() == [0.05, 0.025]  # the user's StepLR
    two, _ = uninterrupted[2]
    assert (two / "checkpoints" / "latest").read_text().strip() == "step-00000064"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_in_epoch_2_then_rerun_is_exact(tmp_path, uninterrupted, processes, rng):
    steps = 64 // processes  # optimizer steps per epoch
    target = rng.randint(steps + 1, 2 * steps - 12)  # a step of epoch 2, not too near its end
    where = f"(kill after step {target}, {processes} process(es); TEST_SEED={TEST_SEED})"
    cmd = [PYTHON, str(SCRIPT), str(tmp_path), *ARGS] if processes == 1 else [*TWO, "--main_process_port", os.environ.get("MAIN_PORT", "29500"), str(SCRIPT), str(tmp_path), *ARGS]
    env = dict(os.environ, PYTHONUNBUFFERED="1") if processes == 1 else two_rank_env()
    proc = start_process(cmd, env)
    wait_for(lambda: latest_step(tmp_path) >= target, proc, f"a checkpoint at step {target} {where}")
    kill_group(proc)
    killed = latest_step(tmp_path)
    assert killed < 2 * steps, f"the run finished before the kill {where}"
    again = run_one(SCRIPT, tmp_path, *ARGS) if processes == 1 else launch_two(SCRIPT, tmp_path, *ARGS)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming from {tmp_path}/checkpoints/step-{killed:08d} (epoch 2, batch" in flat(again.stdout), where
    assert_same_run(tmp_path, uninterrupted[processes][0], context=f"{where}, resumed from step {killed}")


@pytest.mark.slow
def test_sigusr1_in_a_user_script_saves_and_exits_75(tmp_path, uninterrupted):
    proc = start_process([PYTHON, str(SCRIPT), str(tmp_path), *ARGS], dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for(lambda: latest_step(tmp_path) >= 70, proc, "a checkpoint in epoch 2")
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    step = latest_step(tmp_path)
    assert f"preempted: stopped by SIGUSR1 at epoch 2 batch {step - 64}; checkpoint " in flat(out)
    assert "Traceback" not in out
    again = run_one(SCRIPT, tmp_path, *ARGS)
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path, uninterrupted[1][0])






def test_epochs_is_the_total_after_a_resume(tmp_path, capsys):
    first = small_model().fit(2, blobs(), blobs(seed=1), output_dir=str(tmp_path), progress=False)
    assert first["epoch"].tolist() == [1, 2]
    capsys.readouterr()
    history = small_model().fit(4, blobs(), blobs(seed=1), output_dir=str(tmp_path), progress=False)
    out = capsys.readouterr().out
    assert "resuming from" in flat(out) and "(the end of epoch 2, step 32); training to epoch 4" in flat(out)
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    table = [m.group(1) for m in re.finditer(r"^ *(\d+) +\d+\.\d+ ", out, re.M)]  # the epoch table's rows
    assert table == ["3", "4"]  # trained epochs 3 and 4 only
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1, 2, 3, 4]


def test_the_same_seed_gives_the_same_history(tmp_path):
    a = small_model().fit(2, blobs(), blobs(seed=1), seed=5)
    torch.rand(123)  # whatever the script drew from the global RNG before fit, the seed decides the training
    b = small_model().fit(2, blobs(), blobs(seed=1), seed=5)
    timing = [c for c in TIMING_COLUMNS if c in a]
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing), check_exact=True)
    c = small_model().fit(2, blobs(), blobs(seed=1), seed=6)
    assert c["loss"].tolist() != a["loss"].tolist()


def test_without_an_output_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_model().fit(1, blobs())
    assert list(tmp_path.iterdir()) == []
