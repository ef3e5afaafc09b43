"""What a run prints and draws: lines within 100 columns, a progress bar that resumes where the run was, a plot with a panel per quantity."""

import io
import re
import sys
import pytest
from conftest import MNIST, ROOT


MAIN = ROOT / "train" / "main.py"


SMALL = ["data.train_size=1024", "data.val_size=256", f"data.path={MNIST}"]


@pytest.mark.slow
def test_every_line_of_a_run_fits_100_columns(tmp_path):
    from tests.helpers.terminal import under_a_terminal

    out = "runs/a-rather-long-name-for-an-output-folder"  # in the folder the user works in
    args = [sys.executable, str(MAIN), *SMALL, "epochs=3", "checkpoint.every_steps=3", f"output_dir={out}",
            "early_stopping.monitor=lr", "early_stopping.mode=max", "early_stopping.patience=1",
            "scheduler.name=none", "nonfinite=skip"]
    screens = []
    # one epoch; then the same with 3: it resumes (the plan says so) and stops early; then again:
    # a finished run (one line)
    for epochs in (1, 3, 3):
        code, screen = under_a_terminal([*args, f"epochs={epochs}"], lambda screen: False, columns=100, cwd=tmp_path)
        assert code == 0, screen
        screens.append(screen)
    assert "resuming from" in screens[1] and "early stopping after epoch 2" in screens[1]
    assert "holds a finished run stopped early at epoch 2" in " ".join(screens[2].split())
    for screen in screens:
        for line in screen.replace("\r\n", "\n").split("\n"):
            for part in line.split("\r"):  # each redraw of the progress bar: the bar too must fit
                shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part).rstrip()  # terminal controls take no column
                assert len(shown) <= 100, f"{len(shown)} columns: {part!r}"


def test_the_progress_bar_starts_at_the_resumed_batch(tmp_path):
    from tests.helpers.small_runs import tiny_loader as loader, tiny_loop as build

    from train.saving.checkpoint import Checkpoint
    from train.callbacks.progress import ProgressBar

    first = build()
    first.fit(2, loader(), callbacks=[Checkpoint(first, tmp_path, every_steps=3, keep_last=10)])
    loop = build()
    Checkpoint(loop, tmp_path).load(tmp_path / "step-00000012")  # batch 4 of 8 in epoch 2
    stream = io.StringIO()
    bar = ProgressBar(stream)
    first_draw = []
    original = bar.on_epoch_begin

    def on_epoch_begin(epoch, run):
        original(epoch, run)
        first_draw.append(stream.getvalue().split("\r")[-1])

    bar.on_epoch_begin = on_epoch_begin
    loop.fit(2, loader(), callbacks=[bar])
    assert re.search(r"epoch 2/2: +50%\|.*\| 4/8 ", first_draw[0]), first_draw


def test_the_plot_has_a_panel_per_quantity_with_nonfinite_skip(tmp_path):
    from train.engine.history import quantities
    from train.callbacks.plots import plot_history

    columns = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "skipped_steps", "epoch_s",
               "data_s", "compute_s", "samples_per_s", "flops_per_s"]
    assert quantities(columns) == ["loss", "accuracy"]
    rows = [dict(zip(columns, [e, 1.0 / e, 0.5, 1.1, 0.4, 0.01, 0, 1.0, 0.1, 0.9, 100.0, 1e9])) for e in (1, 2)]
    assert plot_history(rows, tmp_path / "history.png") == 2
    head = (tmp_path / "history.png").read_bytes()[:24]
    assert int.from_bytes(head[16:20], "big") == 2 * 450  # two panels of 4.5 inches at 100 dpi


@pytest.mark.parametrize("workers,cpus,processes,advice", [
    (0, 2, 2, "every CPU of this node is busy"),   # 2 processes on 2 cores: no core for a worker
    (1, 4, 2, "every CPU of this node is busy"),   # 2 CPUs a process: the main thread and its one worker
    (0, 8, 2, "more loader workers (data.num_workers, or your DataLoader's num_workers) (3 CPU(s) free"),
])
def test_the_slow_data_note_advises_workers_only_where_a_core_is_free(monkeypatch, workers, cpus, processes, advice):
    from types import SimpleNamespace

    import train.data.loaders as loaders
    from train.callbacks.slow_data import SlowDataWarning

    monkeypatch.setattr(loaders, "cpus_available", lambda: cpus)
    spare = loaders.spare_cpus(SimpleNamespace(num_workers=workers), processes)
    assert spare == max(0, cpus // processes - 1 - workers)
    said = []
    note = SlowDataWarning(print_fn=lambda line, **_: said.append(line), spare_cpus=spare)
    view = SimpleNamespace(is_main_process=True)
    note.on_epoch_end(1, {"data_s": 0.37, "epoch_s": 1.0}, view)
    note.on_epoch_end(2, {"data_s": 0.5, "epoch_s": 1.0}, view)  # said once per run
    assert len(said) == 1 and said[0].startswith("note: epoch 1 waited for data 37% of the time: "), said
    assert advice in " ".join(said[0].split()), said[0]
    assert max(len(line) for line in said[0].splitlines()) <= 100
    assert ("more loader workers" in said[0]) == (spare > 0)
