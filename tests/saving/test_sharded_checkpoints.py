"""`strategy=fsdp` checkpoints (each process writes its own DCP shards) keep today's guarantees on two
real ranks under launch/cpu2.sh: a killed job's rerun is bit-identical to an uninterrupted run, a
damaged shard falls back to the previous checkpoint with one line, a crafted `.metadata` runs
nothing, and a full disk ends with 74 and the previous `latest` intact."""

import os
import re
import subprocess

import pytest

from conftest import (TEST_SEED, MNIST, ROOT, assert_same_run, flat, kill_group, latest_step, start_process,
                      wait_for)

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

SHARDED = ["epochs=2", "data.train_size=2048", "data.val_size=1001", f"data.path={MNIST}", "checkpoint.every_steps=1",
           "checkpoint.keep_last=3", "progress=false", "strategy=fsdp", "fsdp.min_num_params=1000"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cpu2(out, *extra):
    return start_process([str(ROOT / "launch" / "cpu2.sh"), *SHARDED, f"output_dir={out}", *extra], ENV)


def finished(out, *extra):
    proc = cpu2(out, *extra)
    log, _ = proc.communicate(timeout=600)
    return proc.returncode, log


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted-fsdp")
    code, log = finished(out)
    assert code == 0, log
    return out


class Marker:
    """Unpickled, it would create a file: what a crafted checkpoint does to whoever loads it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_killed_sharded_job_reruns_exactly_past_a_crafted_and_a_damaged_checkpoint(tmp_path, reference, rng):
    import pickle

    from train.saving.storage import write_manifest

    target = rng.randint(10, 13)  # 8 steps an epoch: a step of epoch 2
    proc = cpu2(tmp_path)
    wait_for(lambda: latest_step(tmp_path) >= target, proc, f"step {target} (TEST_SEED={TEST_SEED})")
    kill_group(proc)
    checkpoints = tmp_path / "checkpoints"
    newest, previous = sorted(p.name for p in checkpoints.glob("step-*"))[-2:][::-1]
    metadata = checkpoints / newest / "pytorch_model_fsdp_0" / ".metadata"
    assert (checkpoints / newest / "pytorch_model_fsdp_0" / "__1_0.distcp").is_file()  # each process's shards
    marker = tmp_path / "pwned"
    metadata.write_bytes(pickle.dumps(Marker(str(marker))))
    write_manifest(checkpoints / newest)  # the attacker could rewrite the manifest too
    code, log = finished(tmp_path)
    assert code == 2, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: checkpoint file {metadata} would run code when loaded, or is not DCP's \(it imports "
        rf"(builtins|io)\.open\); refusing it: resume from a checkpoint you trust", errors[0]), log
    assert not marker.exists()
    shard = checkpoints / newest / "optimizer_0" / "__1_0.distcp"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])  # what a broken disk leaves
    code, log = finished(tmp_path)
    assert code == 0, log
    assert f"checkpoint {newest} is damaged (optimizer_0/__1_0.distcp: 100 bytes, expected {size}); resuming " \
           f"from {previous}" in flat(log)
    assert not marker.exists()
    assert_same_run(tmp_path, reference, context=f"(killed after step {target}; TEST_SEED={TEST_SEED})")


def test_a_full_disk_during_a_sharded_save_ends_74_and_keeps_latest(small_disk, reference):
    out = small_disk / "out"
    code, log = finished(out)
    assert code == 74, log
    latest = (out / "checkpoints" / "latest").read_text().strip()
    errors = [line for line in flat(log).split("error: ")[1:]]
    assert re.match(rf"could not save checkpoint step-\d{{8}} to {out}/checkpoints/ \(No space left on device[^;]*\); "
                    rf"[\d.]+ MB free; make room and run the same command again to resume; the last good checkpoint "
                    rf"is {out}/checkpoints/{latest} \(latest\)", errors[0]), log
    assert not list((out / "checkpoints").glob(".tmp-*")), "the partial save was left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    code, log = finished(out)
    assert code == 0, log
    assert f"resuming from {out}/checkpoints/{latest}" in flat(log)
    assert_same_run(out, reference)
