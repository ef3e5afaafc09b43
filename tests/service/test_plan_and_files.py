"""The plan in words, and files the team can read."""

import os
import stat
import subprocess
import sys
from conftest import MNIST, ROOT


MAIN = ROOT / "train" / "main.py"


SMALL = ["data.train_size=1024", "data.val_size=256", f"data.path={MNIST}"]


def test_the_plan_says_the_processes_in_words(tmp_path):
    done = subprocess.run([sys.executable, str(MAIN), *SMALL, "epochs=1", f"output_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first == "plan: tutorial_cnn on 1 process on the CPU, fp32", first
    assert "(NO)" not in done.stdout


def test_files_are_readable_by_the_team_under_umask_022(tmp_path):
    done = subprocess.run([sys.executable, str(MAIN), *SMALL, "epochs=1", "checkpoint.every_steps=3",
                           f"output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))
    assert done.returncode == 0, done.stderr
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert "model.safetensors" in modes and "checkpoints/latest" in modes
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (tmp_path / name).is_dir() else 0o644)}
    assert not wrong, wrong
