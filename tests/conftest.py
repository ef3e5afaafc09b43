"""What every test shares: the project's paths, real processes started and ended (every process a
test starts carries the test's mark in its environment and is killed when the test ends, ranks in
sessions of their own and SLURM jobs' processes too), one seed for every kill point (`TEST_SEED`,
printed in the header: set it to replay a failure), deadlines, and the references of runs."""

import hashlib
import os
import random
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


# The in-process runs of the tests use one thread: their batches are small, and two OpenMP threads
# on two cores stall at every operation while another process (the plot helper, a job beside the
# suite) holds a core. The processes the tests start keep the launchers' own settings.
torch.set_num_threads(1)

TEST_SEED = int(os.environ.get("TEST_SEED") or random.SystemRandom().randrange(10**6))
MARK = "TRAIN_TEST_MARK"  # in the environment of every process a test starts


def pytest_report_header(config):
    return f"TEST_SEED={TEST_SEED} (kill points and other random choices; set TEST_SEED to replay them)"


@pytest.fixture
def rng(request) -> random.Random:
    """This test's random choices (kill points, victims): a function of TEST_SEED and the test's id."""
    digest = hashlib.sha256(f"{TEST_SEED}:{request.node.nodeid}".encode()).hexdigest()
    return random.Random(int(digest[:12], 16))


def marked_processes(mark: str) -> list[int]:
    """The processes whose environment holds `TRAIN_TEST_MARK=mark`, but for this one and its own
    plot helper (`train.callbacks.plots`: one per process, kept from run to run, ended at exit)."""
    found, needle = [], f"{MARK}={mark}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            pid = int(environ.parent.name)
            if pid == os.getpid() or needle not in environ.read_bytes().split(b"\0"):
                continue
            stat = (environ.parent / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            if parent == os.getpid() and b"train.plots" in (environ.parent / "cmdline").read_bytes():
                continue
            found.append(pid)
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture(autouse=True)
def ends_every_process_it_starts(request):
    """The test's mark in the environment its processes inherit; when it ends (passed, failed or
    timed out), every process still marked is killed, whatever session it runs in."""
    mark = hashlib.sha256(f"{os.getpid()}:{request.node.nodeid}:{time.time()}".encode()).hexdigest()[:16]
    before = {name: os.environ.get(name) for name in (MARK, "MAIN_PORT")}
    os.environ[MARK] = mark
    os.environ["MAIN_PORT"] = str(free_ports(5))  # launch/cpu2.sh's and launch_two's: tests can run side by side
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    left = marked_processes(mark)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.05)


FAST_LIMIT_S = 10.0  # a test not marked slow that takes longer fails: `make test-fast` stays fast


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and "slow" not in item.keywords and call.duration > FAST_LIMIT_S:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is in the fast tier but took {call.duration:.1f} s (over "
                           f"{FAST_LIMIT_S:.0f} s): make it smaller, or mark it slow")


@pytest.fixture(autouse=True)
def fast_tests_start_no_process(request, monkeypatch):
    """A fast test starts no subprocess unless it says so (`@pytest.mark.launches`); the run's own
    plot helper (`python -m train.plots`, which the script starts) is no test's launch."""
    if "slow" not in request.keywords and "launches" not in request.keywords:
        real = subprocess.Popen.__init__

        def only_the_plot_helper(self, args, *rest, **kwargs):
            if "train.plots" not in " ".join(map(str, args if isinstance(args, (list, tuple)) else [args])):
                raise AssertionError(f"{request.node.nodeid} is in the fast tier but starts a process ({args}); "
                                     f"mark it slow, or @pytest.mark.launches if it must")
            real(self, args, *rest, **kwargs)

        monkeypatch.setattr(subprocess.Popen, "__init__", only_the_plot_helper)
    yield


def required(what: str, variable: str) -> None:
    """Skip this test for want of `what` on a developer's machine; fail it where `variable` is set
    (CI sets REQUIRE_SLURM, REQUIRE_ROOT, REQUIRE_EXTRAS: there, a component that is missing is a
    broken set-up, not a reason to pass)."""
    if os.environ.get(variable):
        pytest.fail(f"{what} ({variable} is set: this machine must have it)")
    pytest.skip(what)


def need_module(name: str):
    """The module, or (it is missing) a skip on a developer's machine and a failure in CI."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        required(f"{name} is not installed (pip install -e '.[dev]')", "REQUIRE_EXTRAS")


def two_rank_env(**extra) -> dict:
    """Environment for two real gloo ranks on this CPU machine (one thread each: two cores)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def launch_two(script, *args, timeout=300, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` with two CPU ranks: ACCELERATE_USE_CPU=1 with --multi_gpu (`--cpu --num_processes 2`
    silently starts one process)."""
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", os.environ.get("MAIN_PORT", "29500"), "--mixed_precision", "no", "--dynamo_backend",
           "no", str(script), *map(str, args)]
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


def latest_step(out: Path, memory: bool = False) -> int:
    """The newest checkpoint's step of the run in `out`: on disk, or in this node's memory."""
    folder = out / "checkpoints"
    if memory:
        from train.base.paths import memory_checkpoints
        folder = memory_checkpoints(folder)
    try:
        return int((folder / "latest").read_text().strip().split("-")[1])
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
    """The training processes (torchrun's workers: they have LOCAL_RANK in their environment; or
    forked by the supervisor's warm template, named `train-rank-N`: their /proc environment is the
    template's) below `below` whose command line contains `marker`, in rank order."""
    found = []
    for pid in descendants(below):
        try:
            rank = training_rank(pid, marker)
        except (OSError, IndexError):  # ended meanwhile
            continue
        if rank is not None:
            found.append((rank, pid))
    return [pid for _, pid in sorted(found)]


def training_rank(pid: int, marker: str) -> int | None:
    cmdline = Path(f"/proc/{pid}/cmdline").read_text()
    if "train.plots" in cmdline or marker not in cmdline:  # rank 0's drawing helper inherits its RANK
        return None
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    if name.startswith("train-rank-"):
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        forked_by_a_rank = Path(f"/proc/{parent}/comm").read_text().strip() == name  # a loader worker
        return None if forked_by_a_rank else int(name[len("train-rank-"):])
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    rank = [e for e in environ if e.startswith(b"RANK=")]
    return int(rank[0][5:]) if rank and any(e.startswith(b"LOCAL_RANK=") for e in environ) else None


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




def reports_of(pids: list[int]) -> Path:
    """The supervisor's report folder of these training processes: each writes `rank-N.json` there,
    how it lives and how it ended (`train.supervision.reports`), and keeps its `rank-N.stack` open
    (a process forked by the warm template has the template's /proc environment, not its own)."""
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.name.startswith("rank-") and target.suffix == ".stack":
                return target.parent
    raise AssertionError(f"no supervisor's report folder open in {pids}")


def assert_saved_and_exited_75(folder: Path, ranks: int, out: Path, before: int) -> None:
    """Each of `ranks` processes recorded a deliberate exit 75 (preempted) at one step, past
    `before`, and that step's checkpoint is the folder's `latest`."""
    import json

    records = [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(ranks)]
    assert [r.get("code") for r in records] == [75] * ranks, json.dumps(records)
    assert all(r.get("final") and r.get("kind") == "deliberate" for r in records), records
    steps = {r.get("step") for r in records}
    assert len(steps) == 1 and steps.pop() == latest_step(out) > before, (records, latest_step(out), before)


def assert_drawn(path: Path, min_size=(400, 300)) -> None:
    """A PNG that shows something: at least `min_size` pixels (width, height), and more than 2% of
    them not the background (a blank canvas, or one holding a title only, fails)."""
    from matplotlib.image import imread

    image = imread(str(path))
    height, width = image.shape[:2]
    assert width >= min_size[0] and height >= min_size[1], f"{path}: {width}x{height}"
    background = image[0, 0]
    drawn = (abs(image - background).sum(axis=-1) > 0.1).mean()
    assert drawn > 0.02, f"{path}: {drawn:.1%} of its pixels drawn"


def read_until(proc: subprocess.Popen, done, timeout: float) -> str:
    """The process's merged output read as it comes until `done(text so far)`, or fail after `timeout`
    seconds (never a read without a deadline: a hung run must not hang the suite)."""
    import selectors

    text, deadline = "", time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not done(text):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out after {timeout:.0f} s waiting in the output of {proc.args}:\n{text[-3000:]}")
            if selector.select(min(left, 1.0)):
                line = proc.stdout.readline()
                if not line:  # the process closed its output: it ended before `done`
                    pytest.fail(f"the run ended (exit {proc.wait(timeout=60)}) before what the test waits for:\n"
                                f"{text[-3000:]}")
                text += line
    return text


def free_ports(count: int = 4) -> int:
    """The first of `count` consecutive TCP ports free on this machine now (a node's port and the
    next ones its restarts take), so that tests can run side by side."""
    import socket

    chooser = random.Random()
    for _ in range(200):
        base = chooser.randrange(30000, 60000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports")


@pytest.fixture
def small_disk(tmp_path):
    """A 1.8 MB file system (a tmpfs, root only; CI has root and sets REQUIRE_ROOT=1): room for two
    checkpoints of the tutorial CNN, and for one of tests/helpers/user_script.py --hidden 6000."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1800k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        required(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}", "REQUIRE_ROOT")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def tensorboard_scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} of the events files under `folder` (the run's, and the folder
    TensorBoard's `add_hparams` makes beside it), read with TensorBoard's own reader (an events
    file alone exists as soon as the writer starts). Each tag is in one file only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(folder.rglob("events.out.tfevents.*"))
    assert files, f"no events file under {folder}"
    scalars: dict = {}
    for file in files:
        events = EventAccumulator(str(file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            assert tag not in scalars, f"{tag} logged in two files: {files}"
            scalars[tag] = [(s.step, s.value) for s in events.Scalars(tag)]
    return scalars
