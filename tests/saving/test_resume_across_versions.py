"""A run folder written by the project before its modules were layered into packages (main at
f4d51d6, the flat `train/` of 52 modules) resumes with today's code bit for bit: its saved config,
its checkpoint's files and the loop's arithmetic are read and continued as they were written."""

import os
import signal
import subprocess

import pytest

from conftest import MNIST, PYTHON, ROOT, assert_same_run, latest_step, start_process, wait_for

pytestmark = pytest.mark.slow

BEFORE = "f4d51d6"  # main before the packages (and before token-level losses and streams)
RUN = ["epochs=2", "data.train_size=4096", "data.val_size=1001", f"data.path={MNIST}", "checkpoint.every_steps=3",
       "progress=false"]  # 32 optimizer steps an epoch


def test_a_run_folder_of_the_flat_layout_resumes_exactly(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "archive", BEFORE, "train", "configs"], cwd=ROOT, capture_output=True, timeout=60)
    assert archive.returncode == 0, archive.stderr.decode()  # the commit is in main's history
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=60)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = start_process([PYTHON, str(old / "train" / "main.py"), *RUN, f"output_dir={out}"], env)  # the old code
    wait_for(lambda: latest_step(out) >= 42, proc, "step 42 of the old code's run")  # in epoch 2, far from its end
    os.killpg(proc.pid, signal.SIGUSR1)  # preempted: a mid-epoch checkpoint, exit 75
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, log
    assert not (out / "model.safetensors").exists()  # it did not finish

    today = [PYTHON, str(ROOT / "train" / "main.py"), *RUN]
    resumed = subprocess.run([*today, f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "(epoch 2, batch" in " ".join(resumed.stdout.split())
    reference = tmp_path / "reference"  # today's code, never interrupted
    done = subprocess.run([*today, f"output_dir={reference}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert_same_run(out, reference, context=f"(a run of {BEFORE} resumed by today's code)")
