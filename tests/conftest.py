import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "data" / "mnist"
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def two_rank_env(**extra) -> dict:
    """Environment for two real gloo ranks on this CPU machine (one thread each: two cores)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def launch_two(script, *args, timeout=300, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` with two CPU ranks (the form that really starts two; see FACTS)."""
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=two_rank_env(**env), capture_output=True, text=True, timeout=timeout)


def run_one(script, *args, timeout=300, **env) -> subprocess.CompletedProcess:
    cmd = [PYTHON, str(script), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def small_cfg(tmp_path):
    """A smoke-sized MNIST config: 2048 training and 1001 validation samples."""
    from train.config import load_config

    return load_config(ROOT / "configs" / "mnist.yaml",
                       ["epochs=2", "data.train_size=2048", "data.val_size=1001", f"data.path={MNIST}",
                        f"output_dir={tmp_path / 'out'}"])


@pytest.fixture
def torchvision_root(tmp_path):
    """torchvision's offline MNIST layout (root/MNIST/raw, uncompressed), filled from the shipped files."""
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST.glob("*.gz"):
        (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    return tmp_path
