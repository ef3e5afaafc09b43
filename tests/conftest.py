import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "data" / "mnist"
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# the launch wrappers and SLURM jobs find `python` and `accelerate` on PATH: this environment's
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def two_rank_env(**extra) -> dict:
    """Environment for two real gloo ranks on this CPU machine (one thread each: two cores)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def launch_two(script, *args, timeout=300, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` with two CPU ranks: ACCELERATE_USE_CPU=1 with --multi_gpu (`--cpu --num_processes 2`
    silently starts one process)."""
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
    from train.config.loading import load_config

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


def flat(text: str) -> str:
    """Output with every run of white space made one space: lines wrapped at 100 columns read as one."""
    return " ".join(text.split())


# ----------------------------------------------------------------- killing and resuming for real
def start_process(cmd, env) -> subprocess.Popen:
    """A process in a session of its own (so that a test can kill its whole group), output merged. It
    and everything it starts run at a lower priority than the test (nice +5): on two busy cores the
    test still looks often enough to kill a rank where it means to, not steps later. Priority
    changes no result."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: os.nice(5))


def latest_step(out: Path) -> int:
    try:
        return int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (OSError, IndexError, ValueError):
        return 0


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)  # each poll may scan /proc: polling faster would take a core from the ranks


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts each rank in a session of its own, so killing the
    launcher's process group does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_processes(below: int, marker: str = "") -> list[int]:
    """The training processes (torchrun's workers: they have LOCAL_RANK in their environment)
    below `below` whose command line contains `marker`, in rank order."""
    found = []
    for pid in descendants(below):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if "train.plots" in cmdline:  # rank 0's drawing helper inherits its RANK: not a training process
            continue
        if rank and any(e.startswith(b"LOCAL_RANK=") for e in environ) and marker in cmdline:
            found.append((int(rank[0][5:]), pid))
    return [pid for _, pid in sorted(found)]


def kill_group(proc: subprocess.Popen) -> str:
    """SIGKILL the launcher and every process below it at once, as a node failure would."""
    below = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    out, _ = proc.communicate(timeout=60)
    return out


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def assert_same_run(out: Path, reference: Path, epochs: int = 2, context: str = ""):
    """Final weights bit for bit and the history (timing aside) exactly as the uninterrupted run's."""
    mine, ref = weights(out), weights(reference)
    assert mine.keys() == ref.keys()
    different = [k for k in ref if not torch.equal(mine[k], ref[k])]
    assert not different, f"weights differ from the uninterrupted run: {different} {context}"
    assert_same_history(out, reference, epochs, context)


def assert_same_history(out: Path, reference: Path, epochs: int = 2, context: str = ""):
    from train.engine.history import TIMING_COLUMNS

    def history(path):
        frame = pd.read_csv(path / "history.csv")
        return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame])

    mine, ref = history(out), history(reference)
    assert mine["epoch"].tolist() == list(range(1, epochs + 1)), context  # each epoch exactly once
    pd.testing.assert_frame_equal(mine, ref, check_exact=True, obj=f"history {context}")


