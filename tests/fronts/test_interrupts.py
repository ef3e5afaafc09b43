"""Ctrl-C as a person at a terminal does it: SIGINT to the whole foreground process group of
`make train` under a pseudo-terminal. One line, no traceback, a checkpoint at the interrupted
batch, exit 130, and the rerun ends with the weights of an uninterrupted run. A second Ctrl-C
during that save ends at once and leaves the previous checkpoint `latest`."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MNIST, PYTHON, ROOT, assert_same_run, latest_step, start_process, wait_for
from tests.helpers.terminal import under_a_terminal

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out

ARGS = ["epochs=2", "data.train_size=4096", "data.val_size=500", f"data.path={MNIST}", "checkpoint.every_steps=100"]
VENV = Path(sys.executable).parent.parent




def test_ctrl_c_in_make_train_saves_says_one_line_and_the_rerun_is_exact(tmp_path):
    out, reference = tmp_path / "out", tmp_path / "reference"
    done = subprocess.run([PYTHON, str(ROOT / "train" / "main.py"), *ARGS, f"output_dir={reference}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    def in_epoch_2(screen):  # the bar of epoch 2 has moved past its first batches
        return re.search(r"epoch 2/2: +\d+%\|[^|]*\| *([5-9]|\d\d)/32", screen) is not None

    make = ["make", "--no-print-directory", "train", f"VENV={VENV}", "ARGS=" + " ".join([*ARGS, f"output_dir={out}"])]
    code, screen = under_a_terminal(make, in_epoch_2)
    lines = [line.strip() for line in screen.replace("\r", "\n").splitlines()]
    said = [line for line in lines if line.startswith("interrupted at epoch")]
    assert "Traceback" not in screen, screen[-3000:]
    assert len(said) == 1, screen[-3000:]
    batch = int(re.fullmatch(r"interrupted at epoch 2 batch (\d+): saving a checkpoint; run the same command "
                             r"to resume", said[0]).group(1))
    # make passes on the training's exit code 130, then ends by the SIGINT it also received
    assert code in (130, -signal.SIGINT) and "Error 130" in screen, (code, screen[-2000:])
    assert latest_step(out) == 32 + batch  # a checkpoint at the interrupted batch

    again = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PATH=f"{VENV}/bin:{os.environ['PATH']}"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert_same_run(out, reference, context=f"(interrupted at epoch 2 batch {batch})")


def test_a_second_ctrl_c_during_the_save_ends_at_once(tmp_path):
    marker = tmp_path / "saving"
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLOW_SAVE_NUMBER="2", SLOW_SAVE_MARKER=str(marker))
    proc = start_process([PYTHON, str(ROOT / "tests" / "helpers" / "slow_save.py"), *ARGS,
                          "checkpoint.every_steps=null", "progress=false", f"output_dir={tmp_path / 'out'}"], env)
    checkpoints = tmp_path / "out" / "checkpoints"
    wait_for(lambda: latest_step(tmp_path / "out") == 32, proc, "the end of epoch 1")
    proc.send_signal(signal.SIGINT)  # save number 2 is the one this interrupt makes: it hangs
    wait_for(marker.exists, proc, "the interrupt's save")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - started < 5, out
    assert "interrupted at epoch 2 batch" in out and "interrupted again: stopping now, without saving" in out
    assert "Traceback" not in out
    assert (checkpoints / "latest").read_text().strip() == "step-00000032"


def test_ctrl_c_in_a_user_script_is_one_line_too(tmp_path):
    script = ROOT / "tests" / "helpers" / "user_script.py"
    args = [PYTHON, str(script), str(tmp_path / "out"), "--size", "8192", "--epochs", "3"]

    def in_epoch_2(screen):
        return latest_step(tmp_path / "out") > 130  # 128 optimizer steps an epoch

    code, screen = under_a_terminal(args, in_epoch_2)
    assert code == 130, screen[-3000:]
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen[-3000:]
    assert len(re.findall(r"interrupted at epoch 2 batch \d+: saving a checkpoint", screen)) == 1, screen[-3000:]
    saved = latest_step(tmp_path / "out")
    assert saved > 130, saved  # the checkpoint of the interrupt, in epoch 2
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)  # the same command: resumes
    assert again.returncode == 0 and f"step-{saved:08d}" in " ".join(again.stdout.split()), again.stdout[-3000:]
    reference = subprocess.run([*args[:2], str(tmp_path / "reference"), *args[3:]], cwd=ROOT, capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert_same_run(tmp_path / "out", tmp_path / "reference", epochs=3, context="(Ctrl-C in the class front)")
