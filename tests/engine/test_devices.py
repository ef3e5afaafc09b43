"""Processes kept together: an unexpected error on the main process reaches every process (two
real gloo ranks: the other one would otherwise wait in its next collective)."""

import pytest

from conftest import ROOT, launch_two


@pytest.mark.slow
def test_an_unexpected_error_on_the_main_process_reaches_every_process(tmp_path):
    done = launch_two(ROOT / "tests" / "helpers" / "from_main_check.py", tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    caught = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert caught == ["RunError: ZeroDivisionError: division by zero (same on every process: True)"] * 2, caught
