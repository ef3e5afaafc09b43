"""What a person sees: W&B offline runs, log files, the terminal bar, history.png, preflight."""

import fcntl
import json
import os
import pty
import re
import select
import struct
import time
import subprocess
import sys
import termios

import pandas as pd
import pytest
import torch

from conftest import MNIST, ROOT, tensorboard_scalars

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out

MAIN = ROOT / "train" / "main.py"
SMALL = ["data.train_size=1024", "data.val_size=500", f"data.path={MNIST}"]


def run_main(*args, **env):
    return subprocess.run([sys.executable, str(MAIN), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **env))


def wandb_history(run_dir) -> list[dict]:
    """History records of an offline run, read back with `wandb leet inspect --json`."""
    wandb = str(os.path.join(os.path.dirname(sys.executable), "wandb"))
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_wandb_offline_run_equals_history_csv(tmp_path):
    out = tmp_path / "run"
    env = dict(WANDB_MODE="offline")
    result = run_main("tracking.wandb=true", "epochs=2", "log_step_freq=4", f"output_dir={out}", *SMALL, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (out / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id)

    history = pd.read_csv(out / "history.csv")
    epochs = [item for item in wandb_history(runs[0]) if "val_loss" in item]
    assert [e["epoch"] for e in epochs] == history["epoch"].tolist() == [1, 2]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [e[column] for e in epochs] == pytest.approx(history[column].tolist(), rel=1e-12)
    steps = [item for item in wandb_history(runs[0]) if "train/loss" in item]
    assert len(steps) == 4  # 8 steps an epoch, logged every 4

    # the checkpoint carries the run id: a rerun in the same folder (a resume) continues that run,
    # even without the id file
    latest = (out / "checkpoints" / "latest").read_text().strip()
    parts = torch.load(out / "checkpoints" / latest / "callbacks.pt", weights_only=True)
    assert parts["tracker"] == {"run_id": run_id}
    (out / "wandb_run_id").unlink()
    again = run_main("tracking.wandb=true", "epochs=3", f"output_dir={out}", *SMALL, **env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout
    ids = {p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*")}
    assert ids == {run_id}
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2, 3]
    # and its steps go on where the first run's ended: epoch 3 at step 24, after epochs 1 and 2 at 8 and 16
    logged = [item for run in sorted((out / "wandb").glob("offline-run-*")) for item in wandb_history(run)]
    assert [(e["epoch"], e["_step"]) for e in logged if "val_loss" in e] == [(1, 8), (2, 16), (3, 24)]
    steps = [e["_step"] for e in logged]
    assert steps == sorted(steps), steps  # no step logged twice or backwards across the resume


def test_two_processes_make_one_wandb_run_that_equals_history_csv(tmp_path):
    from conftest import launch_two

    out = tmp_path / "run"
    result = launch_two(MAIN, "tracking.wandb=true", "epochs=2", "log_step_freq=2", f"output_dir={out}", *SMALL,
                        WANDB_MODE="offline")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # the main process alone logs
    history = pd.read_csv(out / "history.csv")
    epochs = [item for item in wandb_history(runs[0]) if "val_loss" in item]
    assert [(e["epoch"], e["_step"]) for e in epochs] == [(1, 4), (2, 8)]  # 1024 samples, 2 x 128 a step
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [e[column] for e in epochs] == pytest.approx(history[column].tolist(), rel=1e-12)


def test_tensorboard_scalars_equal_history_csv(tmp_path):
    """The scalars read back with TensorBoard's own reader: each epoch's row at its step, as in
    history.csv (an events file alone exists as soon as the writer starts)."""
    result = run_main("tracking.tensorboard=true", "epochs=2", "log_step_freq=4", f"output_dir={tmp_path}", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    history = pd.read_csv(tmp_path / "history.csv")
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert [step for step, _ in scalars[column]] == [8, 16], column  # the optimizer step of each epoch's end
        assert [value for _, value in scalars[column]] == pytest.approx(history[column].tolist(), rel=1e-6), column
    assert [step for step, _ in scalars["train/loss"]] == [4, 8, 12, 16]  # every log_step_freq batches


def test_an_mlflow_run_read_back_equals_history_csv_and_a_resume_continues_it(tmp_path):
    """tracking.mlflow on two processes: one MLflow run in <output_dir>/mlruns, read back with MLflow's own
    client: every epoch's metrics as history.csv, the config as parameters; a rerun with more epochs
    continues the same run."""
    from conftest import launch_two, need_module

    need_module("mlflow")
    import mlflow

    out = tmp_path / "run"
    first = launch_two(MAIN, "tracking.mlflow=true", "epochs=1", f"output_dir={out}", *SMALL)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    run_id = (out / "mlflow_run_id").read_text().strip()
    store = f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}"
    assert f"tracking: mlflow -> {store}" in " ".join(first.stdout.split())
    again = run_main("tracking.mlflow=true", "epochs=2", f"output_dir={out}", *SMALL)
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stderr[-2000:]
    assert (out / "mlflow_run_id").read_text().strip() == run_id
    client = mlflow.MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]  # one run for 2 processes and the resume
    history = pd.read_csv(out / "history.csv")
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_s", "max_memory_mb"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, column))
        assert [step for step, _ in logged] == [4, 8], column  # each epoch's last optimizer step, once
        assert [value for _, value in logged] == pytest.approx(history[column].tolist(), rel=1e-12), column
    params = runs[0].data.params
    assert params["optimizer.lr"] == "0.01" and params["epochs"] == "1"  # as first logged: MLflow keeps them


def test_log_file_of_a_full_epoch_is_plain_and_small(tmp_path):
    """stdout to a file (not a terminal): no carriage returns, a line every log_every_s."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        result = subprocess.run([sys.executable, str(MAIN), "epochs=1", "data.val_size=1000", "log_every_s=2",
                                 f"output_dir={tmp_path}"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                timeout=600)
    text = log.read_text()
    assert result.returncode == 0, text[-2000:]
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("epoch 1/1 batch ")]
    assert lines and "samples/s eta " in lines[0] and "loss " in lines[0]
    assert log.stat().st_size < 20_000


def test_terminal_gets_a_progress_bar(tmp_path):
    """Under a pseudo-terminal the bar redraws in place with carriage returns."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, str(MAIN), "epochs=1", "log_step_freq=2", f"output_dir={tmp_path}",
                             *SMALL], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 300  # a deadline on every read
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    redraws = re.findall(r"\r(?!\n)", screen)  # carriage returns that are not the tty's \r\n
    assert len(redraws) >= 2 and "epoch 1/1" in screen and "batch/s" in screen and "samples/s=" in screen


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_history_png_has_a_panel_per_quantity(tmp_path):
    result = run_main("epochs=2", f"output_dir={tmp_path}", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height = png_size(tmp_path / "history.png")
    assert (width, height) == (2 * 450, 350)  # loss and accuracy, 4.5 x 3.5 inches each at 100 dpi


def test_preflight_passes_on_a_good_config(tmp_path):
    result = run_main("preflight=true", f"output_dir={tmp_path}", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "preflight ok: 2 training and 2 validation batches" in result.stdout
    assert "checkpoint round trip ok" in result.stdout and "estimated epoch" in result.stdout
    # the round trip's folder lies beside output_dir (.NAME.preflight) and is gone afterwards
    assert not (tmp_path / "history.csv").exists() and not (tmp_path.parent / f".{tmp_path.name}.preflight").exists()
    assert not any(p.name.endswith(".preflight") for p in tmp_path.parent.iterdir())


def test_a_model_that_does_not_fit_the_labels_fails_clearly(tmp_path, capsys):
    from train.fronts import script as main_module
    from train.fronts.models import MODELS

    MODELS["three_classes"] = lambda in_channels, num_classes: torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 3))
    try:
        code = main_module.main(["preflight=true", "model=three_classes", f"output_dir={tmp_path}", *SMALL])
    finally:
        del MODELS["three_classes"]
    err = capsys.readouterr().err.strip()
    # caught before the first batch by the check that a real batch goes through the model and the loss
    assert code == 2
    assert err == "error: model three_classes outputs 3 classes but data.num_classes=10; make them agree (the " \
                  "model's output layer, or data.num_classes)"
