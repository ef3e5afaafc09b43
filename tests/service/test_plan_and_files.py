"""The plan in words, and files the team can read."""

import os
import stat

from conftest import MNIST
from train.fronts.script import main


SMALL = ["data.train_size=512", "data.val_size=128", "batch_size=64", f"data.path={MNIST}"]


def test_the_plan_says_the_processes_in_words(tmp_path, capsys):
    assert main([*SMALL, "epochs=1", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first == "plan: tutorial_cnn on 1 process on the CPU, fp32", first
    assert "(NO)" not in out


def test_files_are_readable_by_the_team_under_umask_022(tmp_path):
    before = os.umask(0o022)
    try:
        assert main([*SMALL, "epochs=1", "checkpoint.every_steps=3", f"output_dir={tmp_path}"]) == 0
    finally:
        os.umask(before)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert "model.safetensors" in modes and "checkpoints/latest" in modes
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (tmp_path / name).is_dir() else 0o644)}
    assert not wrong, wrong
