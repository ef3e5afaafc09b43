"""Every setting that moves mid-epoch state resumes exactly, on two processes: a rank is SIGKILLed at
a seeded optimizer step of epoch 2, the supervisor restarts the job from the latest checkpoint, and
the final weights and history equal an uninterrupted run's, bit for bit."""

import os
import signal

import pytest
import torch

from conftest import TEST_SEED, MNIST, ROOT, assert_same_run, flat, latest_step, rank_processes, start_process, wait_for

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

SMOKE = ["epochs=2", "data.train_size=4096", "data.val_size=1001", f"data.path={MNIST}", "checkpoint.every_steps=1",
         "checkpoint.keep_last=3", "progress=false"]
AUGMENTED = ["model=tests.helpers.augmented:Net", "data.source=python", "data.factory=tests.helpers.augmented:load",
             "data.num_classes=2", "batch_size=64"]
SETTINGS = {  # name: (overrides, optimizer steps per epoch per process)
    "random augmentation in 2 workers": ([*AUGMENTED, "data.num_workers=2"], 16),
    "random augmentation without workers": ([*AUGMENTED, "data.num_workers=0"], 16),  # dropout draws too
    "random augmentation, a smoke run's Subset": ([*AUGMENTED, "data.num_workers=1", "data.train_size=2000"], 16),
    "gradient accumulation 3": (["gradient_accumulation_steps=3"], 6),
    "one-cycle per step": (["scheduler.name=onecycle", "scheduler.interval=step"], 16),
    "max_grad_norm": (["max_grad_norm=0.5"], 16),
    "a stateful user metric": (["metrics=[accuracy, 'tests.helpers.augmented:Seen']"], 16),
    "bf16 autocast on the CPU": (["mixed_precision=bf16"], 16),
    "compile (inductor)": (["compile=true"], 16),
    "weight averaging (ema), both validated": (["ema.decay=0.9", "ema.validate=both"], 16),
    # sharded DCP checkpoints written in the background (each alone: test_sharded_checkpoints, test_async_saves)
    "fsdp, written in the background": (["strategy=fsdp", "fsdp.min_num_params=1000", "checkpoint.async_save=true"],
                                        16),
}


def cpu2(out, extra):
    return start_process([str(ROOT / "launch" / "cpu2.sh"), *SMOKE, *extra, f"output_dir={out}"],
                         dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_killed_rank_resumes_exactly(setting, tmp_path, rng):
    extra, steps = SETTINGS[setting]
    reference = cpu2(tmp_path / "reference", extra)
    log, _ = reference.communicate(timeout=900)
    assert reference.returncode == 0, log
    target, victim = rng.randint(steps + 1, max(steps + 1, 2 * steps - 8)), rng.randint(0, 1)  # 8 before the end
    where = f"({setting}: SIGKILL to rank {victim} after step {target}; TEST_SEED={TEST_SEED})"
    out = tmp_path / "killed"
    proc = cpu2(out, extra)
    ranks = lambda: rank_processes(proc.pid, "main.py")  # noqa: E731
    wait_for(lambda: latest_step(out) >= target and len(ranks()) == 2, proc, f"step {target} {where}", timeout=600)
    os.kill(ranks()[victim], signal.SIGKILL)
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0 and "(restart 1 of 3)" in flat(log), f"{where}\n{log}"
    assert_same_run(out, tmp_path / "reference", context=where)
    if "ema" in setting:  # model.safetensors holds the averages: the trained weights too, bit for bit
        from safetensors.torch import load_file

        mine, theirs = (load_file(str(f / "model_raw.safetensors")) for f in (out, tmp_path / "reference"))
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), where
