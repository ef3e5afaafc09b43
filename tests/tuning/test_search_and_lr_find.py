"""Tuning with real runs: a seeded search over examples/digits (every trial a run under launch/one.sh),
pruning of clearly bad learning rates, a search killed with SIGKILL and continued, and the
learning-rate finder on two processes. (SLURM array workers: tests/test_cluster.py.)"""

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import (PYTHON, ROOT, assert_drawn, assert_same_run, descendants, flat, kill_group, need_module,
                      start_process, wait_for)

pytestmark = pytest.mark.slow  # real runs, one per trial

need_module("sklearn")  # examples/digits
need_module("optuna")

DIGITS = "examples/digits/config.yaml"
SPACE = "examples/digits/space.yaml"
SHORT = ["epochs=3", "progress=false"]


def sweep(folder, *args, space=SPACE, trials=8, timeout=600) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "train.sweep", "--config", DIGITS, "--space", str(space), "--trials", str(trials),
           "--dir", str(folder), *args]
    return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2"),
                          capture_output=True, text=True, timeout=timeout)


def one_run(out, *overrides) -> None:
    done = subprocess.run([str(ROOT / "launch" / "one.sh"), "--config", DIGITS, *overrides, f"output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def trials(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "trials.csv")


def study_size(folder) -> int:
    from train.tuning import study

    return len(study.load(folder).get_trials(deepcopy=False))


def objective(frame: pd.DataFrame) -> pd.Series:
    return frame[next(c for c in frame.columns if c.startswith("objective"))]


def test_a_seeded_search_finishes_its_trials_beats_the_default_and_repeats(tmp_path):
    folder = tmp_path / "search"
    args = [*SHORT, "sweep.monitor=val_accuracy"]
    done = sweep(folder, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = trials(folder)
    assert len(rows) == 8 and set(rows["state"]) <= {"COMPLETE", "PRUNED"}, rows
    assert study_size(folder) == 8
    assert_drawn(folder / "sweep.png")
    # every trial is a real run in its own folder, with the values the study gave it
    for _, row in rows.iterrows():
        saved = yaml.safe_load((folder / f"trial-{row['number']:04d}" / "config.yaml").read_text())
        assert saved["optimizer"]["lr"] == pytest.approx(row["optimizer.lr"], rel=1e-12)
        assert saved["model_args"]["hidden"] == row["model_args.hidden"]

    # the best trial is at least as good as the config's own values trained alike
    one_run(tmp_path / "default", *SHORT)
    default = pd.read_csv(tmp_path / "default" / "history.csv")["val_accuracy"].max()
    complete = rows[rows["state"] == "COMPLETE"]
    assert objective(complete).max() >= default

    # the summary's command retrains the best trial exactly
    out = flat(done.stdout)
    best = complete.loc[objective(complete).idxmax()]
    assert f"best: trial {best['number']}, val_accuracy" in out
    command = shlex.split(re.search(r"retrain it: (.*?) output_dir=", out).group(1))
    assert command[0] == "launch/one.sh" and "sweep.monitor=val_accuracy" not in command
    again = subprocess.run([*command, f"output_dir={tmp_path / 'retrained'}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    mine = load_file(str(tmp_path / "retrained" / "model.safetensors"))
    theirs = load_file(str(folder / f"trial-{best['number']:04d}" / "model.safetensors"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)

    # the same command again: the search is done, nothing runs
    rerun = sweep(folder, *args)
    assert rerun.returncode == 0 and not re.search(r"^trial \d+", rerun.stdout, re.M), rerun.stdout
    assert "8 of 8 trials done" in flat(rerun.stdout) and study_size(folder) == 8
    # --trials may grow: the same command with one more runs one more trial, the next one
    grown = sweep(folder, *args, trials=9)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert re.findall(r"^trial (\d+) (?:done|pruned)", grown.stdout, re.M) == ["8"], grown.stdout
    assert study_size(folder) == 9 and len(trials(folder)) == 9

    # the same seed elsewhere proposes the same values
    other = sweep(tmp_path / "again", *args, trials=2)
    assert other.returncode == 0, other.stdout + other.stderr
    first = trials(tmp_path / "again")
    pd.testing.assert_frame_equal(first[["optimizer.lr", "model_args.hidden"]],
                                  rows[["optimizer.lr", "model_args.hidden"]].iloc[:2], check_exact=True)


def test_a_failed_trial_is_replaced_and_bad_input_stops_the_search(tmp_path):
    """A trial whose loss turns NaN (exit 3) is recorded as failed and another takes its place; a
    trial with bad input (exit 2) would fail alike in every trial: the search stops with 2."""
    space = tmp_path / "space.yaml"
    space.write_text("optimizer.lr: {choice: [1.0e+30, 0.003]}\n")
    folder = tmp_path / "search"
    # the config's own value, 1e30, is the first trial (the baseline): it diverges
    args = ["epochs=1", "progress=false", "optimizer.lr=1.0e+30", "sweep.sampler=random", "sweep.pruner=none"]
    done = sweep(folder, *args, space=space, trials=2)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = trials(folder)
    assert rows["state"].iloc[0] == "FAIL" and rows["optimizer.lr"].iloc[0] == 1e30, rows
    assert (rows["state"] == "COMPLETE").sum() == 2, rows  # replaced: two finished trials, as asked
    assert set(rows.loc[rows["state"] == "FAIL", "optimizer.lr"]) == {1e30}, rows
    assert "trial 0 failed: the training loss became NaN or infinite at epoch 1 batch" in flat(done.stdout)

    bad = tmp_path / "bad.yaml"
    bad.write_text("data.num_classes: {choice: [5]}\n")  # digits has 10 classes
    stopped = sweep(tmp_path / "stopped", "epochs=1", "progress=false", space=bad, trials=3)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert re.findall(r"^trial (\d+) failed", stopped.stdout, re.M) == ["0"], stopped.stdout
    assert study_size(tmp_path / "stopped") == 1 and not (tmp_path / "stopped" / "trial-0001").exists()


def test_clearly_bad_learning_rates_are_pruned_before_their_last_epoch(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optimizer.lr: {choice: [0.003, 1.0e-7, 1.0e-6]}\n")
    folder = tmp_path / "search"
    done = sweep(folder, *SHORT, "sweep.monitor=val_accuracy", "sweep.pruner_args={n_startup_trials: 1}",
                 space=space, trials=3)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = trials(folder)
    pruned = rows[rows["state"] == "PRUNED"]
    assert len(pruned) >= 1 and (pruned["epochs"] < 3).all(), rows
    assert (rows.loc[rows["state"] == "COMPLETE", "optimizer.lr"] == 0.003).all()
    for number in pruned["number"]:
        log = (folder / f"trial-{number:04d}" / "trial.log").read_text()
        assert "pruned by the search's median pruner after epoch" in log and "Traceback" not in log
        assert f"trial {number} pruned after epoch" in done.stdout
    # a pruned trial's folder stays pruned: rerunning the search changes nothing
    again = sweep(folder, *SHORT, "sweep.monitor=val_accuracy", "sweep.pruner_args={n_startup_trials: 1}",
                  space=space, trials=3)
    assert again.returncode == 0 and trials(folder).equals(rows), again.stdout


def test_a_search_killed_with_sigkill_continues_its_trial_exactly(tmp_path):
    folder = tmp_path / "search"
    longer = ["epochs=4", "checkpoint.every_steps=5", "progress=false"]
    cmd = [PYTHON, "-m", "train.sweep", "--config", DIGITS, "--space", SPACE, "--trials", "2", "--dir", str(folder),
           *longer]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = start_process(cmd, env)
    latest = folder / "trial-0001" / "checkpoints" / "latest"
    wait_for(lambda: latest.exists(), proc, "trial 1's first checkpoint", timeout=300)
    below = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the search alone: its trial hears of it from the kernel
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 120
    while any(os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in below):
        assert time.monotonic() < deadline, "the trial's processes outlived the search by two minutes"
        time.sleep(0.2)

    # the stopped trial is another worker's (a node that may come back): left to it for now ...
    worker, log_file = folder / "trial-0001" / "worker", folder / "trial-0001" / "trial.log"
    worker.write_text("another-node")
    size = log_file.stat().st_size
    waiting = start_process(cmd, env)
    time.sleep(15)  # the search starts, asks for a trial, finds only that one, and waits
    assert waiting.poll() is None, waiting.stdout.read()
    assert worker.read_text() == "another-node" and log_file.stat().st_size == size, "taken over at once"
    kill_group(waiting)
    # ... and taken over once it has lain still for two minutes
    still = time.time() - 180
    for path in (worker, log_file):
        os.utime(path, (still, still))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trial 1 continues" in done.stdout and "trial 0:" not in done.stdout, done.stdout
    assert worker.read_text() != "another-node"
    rows = trials(folder)
    assert rows["state"].tolist() == ["COMPLETE", "COMPLETE"] and study_size(folder) == 2
    log = flat((folder / "trial-0001" / "trial.log").read_text())
    assert "preempted: stopped by SIGTERM" in log and "resuming from" in log, log
    assert log.count("plan: ") - log.count("resuming from") == 1  # started from scratch once
    saved = yaml.safe_load((folder / "trial-0001" / "config.yaml").read_text())
    reference = tmp_path / "reference"
    one_run(reference, *longer, f"optimizer.lr={saved['optimizer']['lr']!r}",
            f"model_args.hidden={saved['model_args']['hidden']}")
    assert_same_run(folder / "trial-0001", reference, epochs=4, context="(trial 1 after the search's SIGKILL)")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_lr_find_on_two_processes_suggests_a_rate_that_trains(tmp_path):
    run_folder = tmp_path / "run"
    done = subprocess.run([str(ROOT / "launch" / "cpu2.sh"), "train/lr_find.py", "--config", DIGITS,
                           f"output_dir={run_folder}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not run_folder.exists()  # the run's own folder is untouched
    found = tmp_path / "run-lr_find"
    curve = pd.read_csv(found / "lr_find.csv")
    assert_drawn(found / "lr_find.png")
    assert list(curve.columns) == ["lr", "loss", "smoothed"] and curve["lr"].is_monotonic_increasing
    lines = re.findall(r"^suggested: optimizer\.lr=(\S+)$", done.stdout, re.M)
    assert len(lines) == 1, done.stdout  # one line, from one process
    lr = float(lines[0])
    assert curve["lr"].min() < lr < curve["lr"].max()
    one_run(tmp_path / "trained", f"optimizer.lr={lr}", "progress=false")  # the config's 20 epochs
    assert pd.read_csv(tmp_path / "trained" / "history.csv")["val_accuracy"].iloc[-1] >= 0.95


def test_two_commands_on_one_search_share_its_trials(tmp_path):
    """A second command on the same folder joins as another worker (and --workers 2 runs two trials at
    a time, each with its own GPUs: the first command sees four, CUDA_VISIBLE_DEVICES=0,1,2,3): four
    trials in all, each run once, none asked for twice."""
    folder = tmp_path / "search"
    cmd = [PYTHON, "-m", "train.sweep", "--config", DIGITS, "--space", SPACE, "--trials", "4", "--dir", str(folder),
           "epochs=1", "progress=false", "callbacks=[tests.helpers.record_env:RecordEnv]"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    first = start_process([*cmd, "--workers", "2"], dict(env, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    wait_for(lambda: (folder / "trial-0000").exists(), first, "the first trial", timeout=120)
    second = start_process(cmd, env)
    logs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], logs
    rows = trials(folder)
    assert sorted(rows["number"]) == [0, 1, 2, 3] and set(rows["state"]) == {"COMPLETE"}, rows
    assert study_size(folder) == 4
    started = [re.findall(r"^trial (\d+): ", log, re.M) for log in logs]
    assert sorted(int(n) for ns in started for n in ns) == [0, 1, 2, 3], logs  # each started by one worker
    assert started[1], logs  # the second command did take a share
    for number in range(4):
        log = flat((folder / f"trial-{number:04d}" / "trial.log").read_text())
        assert log.count("plan: ") == 1 and "resuming from" not in log
    assert "trials in slot 0: cores 0, GPU 0,1; trials in slot 1: cores 1, GPU 2,3" in flat(logs[0])
    given = {int(n): (folder / f"trial-{int(n):04d}" / "cuda_visible_devices").read_text() for n in started[0]}
    assert set(given.values()) <= {"0,1", "2,3"} and len(set(given.values())) == min(2, len(given)), given
    assert all((folder / f"trial-{int(n):04d}" / "cuda_visible_devices").read_text() == "(unset)" for n in started[1])


def test_with_tracking_each_trial_is_a_wandb_run_in_the_search_group(tmp_path):
    """tracking.wandb=true (offline): one W&B run per trial, named after it, in the group of the search."""
    folder = tmp_path / "tuned-digits"
    done = subprocess.run([PYTHON, "-m", "train.sweep", "--config", DIGITS, "--space", SPACE, "--trials", "1",
                           "--dir", str(folder), "epochs=1", "progress=false", "tracking.wandb=true"], cwd=ROOT,
                          env=dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    wandb = os.path.join(os.path.dirname(PYTHON), "wandb")
    for number in (0,):
        runs = list((folder / f"trial-{number:04d}" / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        records = subprocess.run([wandb, "leet", "inspect", "--json", str(runs[0])], capture_output=True, text=True,
                                 timeout=120).stdout
        found = {}
        for line in records.splitlines():
            _collect(json.loads(line), found)
        assert found.get("run_group") == "tuned-digits" and \
            found.get("display_name") == f"tuned-digits/trial-{number:04d}", \
            {k: found.get(k) for k in ("run_group", "display_name")}


def _collect(record, found: dict) -> None:
    """Every (key, string value) in a record, at any depth (the first of each key)."""
    if isinstance(record, dict):
        for key, value in record.items():
            if isinstance(value, str):
                found.setdefault(key, value)
            else:
                _collect(value, found)
    elif isinstance(record, list):
        for item in record:
            _collect(item, found)


def test_a_search_runs_its_trials_sharded_on_two_processes(tmp_path):
    """`--launch launch/cpu2.sh strategy=fsdp`: every trial a sharded two-process run; its value is
    its history's best val_loss, and the best trial's model loads back."""
    folder = tmp_path / "search"
    done = sweep(folder, "--launch", "launch/cpu2.sh", "strategy=fsdp", *SHORT, trials=2)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = trials(folder)
    assert len(frame) == 2 and (frame["state"] == "COMPLETE").all(), frame
    for number, value in zip(frame["number"], objective(frame)):
        trial = folder / f"trial-{number:04d}"
        assert "strategy: fsdp (FSDP2) over 2 processes" in " ".join((trial / "trial.log").read_text().split())
        assert value == pytest.approx(pd.read_csv(trial / "history.csv")["val_loss"].min(), rel=1e-9)
    import train

    best = frame.loc[objective(frame).idxmin(), "number"]
    assert train.load_model(folder / f"trial-{best:04d}") is not None
