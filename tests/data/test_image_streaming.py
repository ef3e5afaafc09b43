"""Data larger than memory: a Hugging Face `imagefolder` whose decoded images exceed
data.in_memory_limit_mb streams (decoded per sample by loader workers), says so in the plan,
trains, resumes bit for bit after a SIGKILL, and never holds the decoded set in memory."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEST_SEED, PYTHON, ROOT, assert_same_run, flat, kill_group, latest_step, start_process, wait_for, need_module

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out

need_module("datasets")
SIDE, TRAIN, VAL = 576, 1500, 250  # 995 KB a decoded image: 1.4 GB of training images, 11 MB of PNG


def make_imagefolder(root):
    """Two classes of smooth (so: small as PNG, large decoded) images, a bright corner telling them apart."""
    from PIL import Image

    ramp = np.linspace(0, 200, SIDE, dtype=np.float32)
    for split, count in (("train", TRAIN), ("test", VAL)):
        for i in range(count):
            label = i % 2
            shade = ((ramp[None, :] if label == 0 else ramp[:, None]) + (i * 7) % 40).astype(np.uint8)
            img = np.empty((SIDE, SIDE, 3), np.uint8)
            img[..., 0], img[..., 1], img[..., 2] = shade, shade.T if label else shade, 128
            q = SIDE // 4
            img[(slice(None, q), slice(None, q)) if label == 0 else (slice(-q, None), slice(-q, None))] = 255
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png", compress_level=1)


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    make_imagefolder(root)
    return root


def args(root, out):
    return ["train/main.py", "data.source=hf", "data.name=imagefolder", f"data.path={root}", "data.val_split=test",
            "data.in_memory_limit_mb=64", "data.num_classes=2", "model=tests.helpers.image_model:Tiny",
            "batch_size=8", "epochs=1", "checkpoint.every_steps=10", "progress=false", f"output_dir={out}"]


def env(tmp_path):
    return dict(os.environ, HF_HOME=str(tmp_path / "hf"), PYTHONUNBUFFERED="1")


def test_an_imagefolder_over_the_limit_streams_resumes_exactly_and_stays_small(imagefolder, tmp_path, rng):
    reference = tmp_path / "reference"
    # the peak resident memory of the run and its loader workers, as the kernel counts it
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, PYTHON, *args(imagefolder, reference)], cwd=ROOT,
                          env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = flat(done.stdout)
    decoded = TRAIN * SIDE * SIDE * 3
    assert f"data: streaming: {TRAIN} training images, {decoded / 2**20:,.0f} MB decoded (over " \
           f"data.in_memory_limit_mb=64): decoded per sample by loader workers" in said
    peak = int(done.stdout.strip().splitlines()[-1])
    assert peak < decoded, f"peak RSS {peak / 2**20:.0f} MB, decoded set {decoded / 2**20:.0f} MB"

    out = tmp_path / "out"
    target = rng.randint(20, 140)  # of 188 optimizer steps
    where = f"(kill after step {target}; TEST_SEED={TEST_SEED})"
    proc = start_process([PYTHON, *args(imagefolder, out)], env(tmp_path))
    wait_for(lambda: latest_step(out) >= target, proc, f"a checkpoint at step {target} {where}", timeout=300)
    kill_group(proc)
    again = subprocess.run([PYTHON, *args(imagefolder, out)], cwd=ROOT, env=env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in flat(again.stdout), where
    assert_same_run(out, reference, epochs=1, context=where)
