"""Resuming on another number of processes keeps the run's global batch: two real gloo ranks killed
mid-epoch 2 and resumed on one process (and one resumed on two), for `ddp` and `fsdp`, end with the
weights of an uninterrupted two-process run (to 1e-5) and every epoch once in the history; a change
the processes cannot divide is one line, exit 2, nothing written."""

import os

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import TEST_SEED, ROOT, flat, kill_group, latest_step, start_process, wait_for

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

TINY = ["model=tests.helpers.tiny:mlp", "data.source=python", "data.factory=tests.helpers.tiny:load",
        "data.num_classes=2", "batch_size=32", "epochs=3", "checkpoint.every_steps=4", "checkpoint.keep_last=2",
        "progress=false", "optimizer.lr=0.01"]  # 2048 samples: 64 batches of 32, even on 1 and 2 processes
STRATEGIES = {"ddp": [], "fsdp": ["strategy=fsdp", "fsdp.min_num_params=100"]}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def launch(processes: int, out, *extra):
    wrapper = ROOT / "launch" / ("cpu2.sh" if processes == 2 else "one.sh")
    return start_process([str(wrapper), *TINY, f"output_dir={out}", *extra], ENV)


def finished(processes: int, out, *extra):
    proc = launch(processes, out, *extra)
    log, _ = proc.communicate(timeout=600)
    return proc.returncode, log


def killed_midway(processes: int, out, target: int, *extra) -> None:
    proc = launch(processes, out, *extra)
    wait_for(lambda: latest_step(out) >= target, proc, f"a checkpoint at step {target}")
    kill_group(proc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted two-process runs, one per strategy."""
    runs = {}
    for name, extra in STRATEGIES.items():
        out = tmp_path_factory.mktemp(f"two-{name}")
        code, log = finished(2, out, *extra)
        assert code == 0, log
        runs[name] = out
    return runs


def assert_close_run(out, reference, context):
    mine, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert set(mine) == set(theirs)
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-5, rtol=0, msg=f"{name} {context}")
    a, b = pd.read_csv(out / "history.csv"), pd.read_csv(reference / "history.csv")
    assert a["epoch"].tolist() == [1, 2, 3], context  # every epoch once
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert a[column].tolist() == pytest.approx(b[column].tolist(), abs=1e-5), f"{column} {context}"


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_a_run_resumed_on_another_process_count_keeps_its_global_batch(tmp_path, reference, rng, strategy, before,
                                                                       after):
    extra = STRATEGIES[strategy]
    if before == 1:  # one process takes the global batch of 64 in two batches of 32
        extra = [*extra, "gradient_accumulation_steps=2"]
    target = rng.randint(34, 58)  # 32 optimizer steps an epoch: a step of epoch 2
    where = f"({strategy}, {before} -> {after} process(es), killed after step {target}; TEST_SEED={TEST_SEED})"
    killed_midway(before, tmp_path, target, *extra)
    code, log = finished(after, tmp_path, *extra)
    assert code == 0, f"{where}\n{log}"
    accumulation = 2 if after == 1 else 1
    assert (f"resuming on {after} process(es) from a checkpoint of {before} (accumulation {3 - accumulation}): "
            f"accumulation {accumulation} keeps the global batch of 64 samples") in flat(log), f"{where}\n{log}"
    assert f"batch 32 per process x {after} process(es) x accumulation {accumulation} = 64 samples" in flat(log), log
    assert_close_run(tmp_path, reference[strategy], where)


def test_a_process_count_that_cannot_keep_the_global_batch_is_refused(tmp_path):
    code, log = finished(1, tmp_path, "epochs=1")  # one process, accumulation 1: a global batch of 32
    assert code == 0, log
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    code, log = finished(2, tmp_path, "epochs=2")
    assert code == 2, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: checkpoint '{tmp_path}/checkpoints/step-00000064' was written by 1 process(es) x accumulation 1: a "
        f"global batch of 1 x batch_size, which 2 processes cannot share evenly; resume on a number of processes "
        f"that divides 1"), log
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_resuming_from_an_older_checkpoint_on_one_process_sets_the_newer_aside_and_says_so(tmp_path, reference):
    """The issue's walk: two processes stopped in epoch 2, resumed on one from the epoch-1 checkpoint
    (older than `latest`): the newer checkpoints are named and moved out of rotation's way, and the
    run ends with the uninterrupted two-process run's weights."""
    killed_midway(2, tmp_path, 44)
    checkpoints = tmp_path / "checkpoints"
    newer = sorted(p.name for p in checkpoints.glob("step-*") if p.name > "step-00000032")
    assert newer, list(checkpoints.iterdir())
    code, log = finished(1, tmp_path, f"resume={checkpoints / 'step-00000032'}")
    assert code == 0, log
    assert (f"resuming from step-00000032 leaves behind the newer {', '.join(newer)} (another continuation): moved "
            f"to {checkpoints / 'left-behind'}/, which rotation and resume=auto leave alone") in flat(log), log
    assert sorted(p.name for p in (checkpoints / "left-behind").iterdir()) == newer
    assert "accumulation 2 keeps the global batch of 64 samples" in flat(log), log
    assert_close_run(tmp_path, reference["ddp"], "(resumed from the end of epoch 1 on one process)")


def test_a_run_may_change_its_strategy_when_it_resumes(tmp_path, reference, rng):
    """A ddp run killed mid-epoch 2 and resumed sharded (its whole checkpoint put into the shards)
    ends with the uninterrupted ddp run's weights."""
    killed_midway(2, tmp_path, rng.randint(34, 58))
    code, log = finished(2, tmp_path, *STRATEGIES["fsdp"])
    assert code == 0, log
    assert "strategy: fsdp (FSDP2) over 2 processes" in flat(log) and "resuming from" in flat(log), log
    assert_close_run(tmp_path, reference["ddp"], "(ddp, resumed as fsdp)")
