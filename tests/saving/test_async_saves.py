"""Checkpoints written in the background (`checkpoint.async_save=true`): training goes on while a
write is on its way to disk, a SIGKILL during it leaves `latest` at the previous verified checkpoint
and the rerun is exact, a full disk during it ends with 74 and `latest` intact, and a run's final
files are complete when it exits 0."""

import os
import re
import subprocess

import pytest

from conftest import MNIST, PYTHON, ROOT, assert_same_run, flat, kill_group, start_process, wait_for

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

MAIN = ROOT / "train" / "main.py"
# 2048 samples of batch 128: 16 optimizer steps an epoch
SMOKE = ["epochs=2", "data.train_size=2048", "data.val_size=1001", f"data.path={MNIST}", "checkpoint.every_steps=3",
         "progress=false"]
ASYNC = "checkpoint.async_save=true"


def run_main(out, *extra, script=MAIN, env=None):
    return subprocess.run([PYTHON, str(script), *SMOKE, f"output_dir={out}", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run saving synchronously: background writes change no number."""
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run_main(out)
    assert done.returncode == 0, done.stderr
    return out


def verified(checkpoints):
    from train.saving.storage import damage

    return {p.name: damage(p) for p in sorted(checkpoints.glob("step-*"))}


def test_background_writes_end_complete_and_train_the_same(tmp_path, reference):
    done = run_main(tmp_path, ASYNC)
    assert done.returncode == 0, done.stderr
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000032"  # the last one, waited for
    assert set(verified(checkpoints).values()) == {None}  # every kept checkpoint intact by its manifest
    assert not list(checkpoints.glob(".tmp-*"))
    assert_same_run(tmp_path, reference)


def test_a_kill_during_a_background_write_leaves_the_previous_latest_and_the_rerun_is_exact(tmp_path, reference):
    marker = tmp_path / "held"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HOLD_WRITE_NUMBER="2", HOLD_WRITE_MARKER=str(marker))
    proc = start_process([PYTHON, str(ROOT / "tests" / "helpers" / "slow_background_write.py"), *SMOKE,
                          f"output_dir={tmp_path / 'out'}", ASYNC], env)
    wait_for(marker.exists, proc, "the second background write")
    # the write of step 6 is held; training went on to the next save (step 9), which waits for it
    wait_for(lambda: "9" in open(f"{marker}.saves").read().split(), proc, "the save after it")
    kill_group(proc)
    checkpoints = tmp_path / "out" / "checkpoints"
    assert marker.read_text() == ".tmp-step-00000006"
    assert (checkpoints / "latest").read_text().strip() == "step-00000003"  # the previous, verified one
    assert not (checkpoints / "step-00000006").exists() and verified(checkpoints) == {"step-00000003": None}
    again = run_main(tmp_path / "out", ASYNC)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {checkpoints}/step-00000003" in flat(again.stdout)
    assert not list(checkpoints.glob(".tmp-*")), "the partial write was not cleaned up"
    from train.saving.background import staging_folder

    assert not list(staging_folder(checkpoints, "*").parent.glob(staging_folder(checkpoints, "*").name)), \
        "the killed run's staged copy was left in memory"
    assert_same_run(tmp_path / "out", reference)


def test_a_full_disk_during_a_background_write_ends_74_with_latest_intact(small_disk, reference):
    out = small_disk / "out"
    full = run_main(out, ASYNC)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 74 and len(lines) == 1, full.stdout + full.stderr
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert re.fullmatch(rf"error: could not save checkpoint step-\d{{8}} to {out}/checkpoints/ \(No space left on "
                        rf"device[^;]*\); [\d.]+ MB free; make room and run the same command again to resume; the last "
                        rf"good checkpoint is {out}/checkpoints/{latest} \(latest\)", lines[0]), lines
    assert verified(out / "checkpoints")[latest] is None
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    again = run_main(out, ASYNC)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {out}/checkpoints/{latest}" in flat(again.stdout)
    assert_same_run(out, reference)


def test_a_staging_place_without_room_writes_directly_and_says_so(tmp_path, reference):
    """A container's /dev/shm is often small: where it has less room than the last checkpoint, saves
    are written directly, with one note (here TRAIN_STAGING_DIR on a 600 KB file system: a checkpoint
    of the tutorial CNN and its Adam state is about 700 KB)."""
    from conftest import required

    room = tmp_path / "shm"
    room.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(room)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        required(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}", "REQUIRE_ROOT")
    try:
        done = run_main(tmp_path / "out", ASYNC, env=dict(os.environ, TRAIN_STAGING_DIR=str(room)))
    finally:
        subprocess.run(["umount", str(room)], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert flat(done.stdout).count("note: checkpoint.async_save:") == 1
    assert re.search(rf"note: checkpoint.async_save: \d+ MB free in {room} on some node, less than a checkpoint "
                     rf"\(\d+ MB\): writing checkpoints directly", flat(done.stdout)), done.stdout
    assert set(verified(tmp_path / "out" / "checkpoints").values()) == {None}
    assert_same_run(tmp_path / "out", reference)
