"""Cluster runs on real engines: two "nodes" over loopback (two `accelerate launch` commands), and
SLURM jobs on a local one-node cluster (tests/cluster/start.sh), including preemption by USR1,
requeue and resume.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import TEST_SEED, MNIST, ROOT, flat, free_ports, need_module, required
from train.engine.history import TIMING_COLUMNS

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out

SMOKE = ["epochs=2", "data.train_size=2048", "data.val_size=1001", f"data.path={MNIST}",
         "checkpoint.every_steps=3", "progress=false"]


def history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "history.csv")


def test_two_nodes_over_loopback_form_one_job(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MAIN_PORT=str(free_ports()))
    nodes = [subprocess.Popen([str(ROOT / "launch" / "multinode.sh"), str(rank), "2", "127.0.0.1", *SMOKE,
                               f"output_dir={out}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs
    assert "on 2 processes on CPUs (gloo, 2 nodes), fp32" in logs[0] and logs[0].count("wrote ") == 1
    assert "wrote " not in logs[1] and "epoch " not in logs[1]  # node 1 prints no table and writes nothing
    rows = history(out)
    assert rows["epoch"].tolist() == [1, 2]

    # the job's validation numbers equal plain torch's of the same weights (tests.helpers.reference)
    from tests.helpers.reference import classifier_scores, mnist
    from train.fronts.models import TutorialCNN

    model = TutorialCNN()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    alone = classifier_scores(model, *mnist("test", 1001, stats_size=2048))
    last = rows.iloc[-1]
    assert alone["val_accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-12)
    assert alone["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster on this machine for this module's tests, stopped afterwards."""
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(ROOT / "tests" / "cluster" / "start.sh"), str(folder)], capture_output=True,
                             text=True, timeout=300)
    if started.returncode == 3:
        required(f"no local SLURM cluster: {started.stderr.strip()}", "REQUIRE_SLURM")
    assert started.returncode == 0, started.stderr
    env = dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"), CPU_PROCESSES_PER_NODE="2",
               PYTHONUNBUFFERED="1")
    yield env
    subprocess.run([str(ROOT / "tests" / "cluster" / "stop.sh"), str(folder)], timeout=120)


def sbatch(env, out: Path, *args, wait=True) -> subprocess.Popen:
    """`sbatch --wait slurm/train.sh` on the CPU-only test cluster; the job id is the first line."""
    cmd = ["sbatch", "--parsable", "--gpus-per-node=0", f"--output={out}/%x-%j.out",
           *(["--wait"] if wait else []), "slurm/train.sh", *SMOKE, f"output_dir={out}", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def preempt_after_first_checkpoint(slurm, job, out: Path = None) -> str:
    """Wait for `job`'s first checkpoint in `out` (default: the job's own folder, runs/slurm-<id>), then
    do what a time limit (`--signal=B:USR1@N`) does: USR1 to the batch shell alone, which must pass
    it on. Returns the job id."""
    job_id = job.stdout.readline().strip()
    latest = (out or job_folder(job_id)) / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.05)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=slurm, check=True)
    return job_id


def job_folder(job_id: str) -> Path:
    """Where a job that names no output folder writes: runs/slurm-<job id> (its $TRAIN_OUTPUT_DIR)."""
    return ROOT / "runs" / f"slurm-{job_id}"


@pytest.fixture
def job_folders():
    """Job ids whose runs/slurm-<id> folder the test leaves to be removed when it ends."""
    ids: list[str] = []
    yield ids
    import shutil

    for job_id in ids:
        shutil.rmtree(job_folder(job_id), ignore_errors=True)


def job_log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(out.glob("train-*.out")))


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    out = tmp_path_factory.mktemp("sbatch-smoke")
    job = sbatch(slurm, out)
    stdout, stderr = job.communicate(timeout=600)
    return out, job.returncode, stderr


def test_sbatch_smoke_job(uninterrupted):
    out, code, stderr = uninterrupted
    log = job_log(out)
    assert code == 0, stderr + log
    assert "on 2 processes on CPUs (gloo), fp32" in log and "SLURM_RESTART_COUNT=0" in log
    assert history(out)["epoch"].tolist() == [1, 2]
    # one process speaks for the job: one plan, one table header, one "wrote"
    headers = re.findall(r"^epoch +loss ", log, re.M)
    assert log.count("plan: ") == 1 and len(headers) == 1 and log.count("wrote ") == 1


def test_sbatch_preemption_requeues_resumes_and_matches(slurm, uninterrupted, tmp_path):
    job = sbatch(slurm, tmp_path)
    job_id = preempt_after_first_checkpoint(slurm, job, tmp_path)
    _, stderr = job.communicate(timeout=600)  # --wait waits across the requeue
    log = job_log(tmp_path)
    assert job.returncode == 0, stderr + log
    assert "USR1 received" in log and f"requeueing job {job_id}" in log
    assert "SLURM_RESTART_COUNT=1: resuming" in log and "resuming from " in log
    rows = history(tmp_path)
    assert rows["epoch"].tolist() == [1, 2]
    reference, mine = load_file(str(uninterrupted[0] / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(reference[k], mine[k]) for k in reference)
    timing = [c for c in TIMING_COLUMNS if c in rows]
    pd.testing.assert_frame_equal(rows.drop(columns=timing), history(uninterrupted[0]).drop(columns=timing))


def test_a_sharded_job_preempted_on_slurm_is_requeued_and_resumes_exactly(slurm, tmp_path):
    """strategy=fsdp inside sbatch (2 gloo ranks): its sharded checkpoint taken at USR1, the job
    requeued and resumed, the final weights those of an uninterrupted sharded job, bit for bit."""
    for folder in ("uninterrupted", "preempted"):  # where the jobs' logs go: they must exist
        (tmp_path / folder).mkdir()
    done = sbatch(slurm, tmp_path / "uninterrupted", "strategy=fsdp", "fsdp.min_num_params=1000")
    _, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr + job_log(tmp_path / "uninterrupted")
    out = tmp_path / "preempted"
    job = sbatch(slurm, out, "strategy=fsdp", "fsdp.min_num_params=1000")
    preempt_after_first_checkpoint(slurm, job, out)
    _, stderr = job.communicate(timeout=600)
    log = job_log(out)
    assert job.returncode == 0, stderr + log
    assert "strategy: fsdp (FSDP2) over 2 processes" in " ".join(log.split()) and "SLURM_RESTART_COUNT=1: resuming" in log
    assert (out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "pytorch_model_fsdp_0").is_dir()
    reference, mine = (load_file(str(folder / "model.safetensors")) for folder in (tmp_path / "uninterrupted", out))
    assert all(torch.equal(reference[k], mine[k]) for k in reference)


def test_the_batch_shells_relay_is_what_reaches_the_training(slurm, tmp_path):
    """A time limit's USR1 reaches only the batch shell: without slurm/train.sh's line that passes
    it on to the job's steps, the training never hears it, saves nothing and is not requeued."""
    text = (ROOT / "slurm" / "train.sh").read_text()
    relay = '    scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || true\n'
    assert relay in text
    script = tmp_path / "train-without-relay.sh"
    script.write_text(text.replace(relay, ""))
    job = subprocess.Popen(["sbatch", "--parsable", "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out", "--wait",
                            str(script), *SMOKE, f"output_dir={tmp_path}"], cwd=ROOT, env=dict(slurm, TRAIN_ROOT=str(ROOT)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    preempt_after_first_checkpoint(slurm, job, tmp_path)
    _, stderr = job.communicate(timeout=600)
    log = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert job.returncode == 0, stderr + log
    assert "USR1 received" in log  # the shell heard it ...
    assert "preempted: stopped by SIGUSR1" not in log and "requeueing" not in log, log  # ... the training did not
    assert history(tmp_path)["epoch"].tolist() == [1, 2]  # it ran to its end in one go


def test_job_array_tasks_get_their_own_runs(slurm, tmp_path):
    cmd = ["sbatch", "--parsable", "--wait", "--array=0-1", "--gpus-per-node=0", "--cpus-per-task=1",
           f"--output={tmp_path}/%x-%A_%a.out", "slurm/train.sh", "epochs=1", "data.train_size=512",
           "data.val_size=128", f"data.path={MNIST}", "progress=false", "seed=%a", f"output_dir={tmp_path}/task-%a"]
    env = dict(slurm, CPU_PROCESSES_PER_NODE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert done.returncode == 0, done.stderr + logs
    losses = [history(tmp_path / f"task-{i}")["loss"].item() for i in (0, 1)]
    assert losses[0] != losses[1]  # seed=%a: each task trained with its own seed


USER_SCRIPT = ["tests/helpers/user_script.py", "--size", "4096", "--every", "2"]


def test_a_user_script_preempted_on_slurm_is_requeued_and_resumes_exactly(slurm, tmp_path, job_folders):
    """`sbatch slurm/train.sh my_script.py ...`: the user's own script under the same srun +
    accelerate launch + USR1 + requeue machinery as train/main.py (two gloo processes). It names no
    output folder: it writes to $TRAIN_OUTPUT_DIR, the job's runs/slurm-<id>."""
    done = subprocess.run(["sbatch", "--parsable", "--wait", "--gpus-per-node=0", f"--output={tmp_path}/ref-%j.out",
                           "slurm/train.sh", *USER_SCRIPT], cwd=ROOT, env=slurm, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + "\n".join(p.read_text() for p in tmp_path.glob("ref-*.out"))
    job_folders.append(done.stdout.strip())
    reference = job_folder(done.stdout.strip())
    assert (reference / "model.safetensors").is_file() and (reference / "checkpoints" / "latest").is_file()

    job = subprocess.Popen(["sbatch", "--parsable", "--wait", "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out",
                            "slurm/train.sh", *USER_SCRIPT],
                           cwd=ROOT, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = preempt_after_first_checkpoint(slurm, job)
    job_folders.append(job_id)
    out = job_folder(job_id)
    _, stderr = job.communicate(timeout=600)
    log = "\n".join(p.read_text() for p in sorted(tmp_path.glob("train-*.out")))
    assert job.returncode == 0, stderr + log
    assert f"requeueing job {job_id}" in log and "SLURM_RESTART_COUNT=1: resuming" in log
    assert "preempted: stopped by SIGUSR1" in log and re.search(rf"resuming from \S*runs/slurm-{job_id}/checkpoints/step-",
                                                                flat(log)), log
    assert "Traceback" not in log
    reference_weights, weights = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(reference_weights[k], weights[k]) for k in reference_weights)
    assert history(out)["epoch"].tolist() == [1, 2]


def test_sbatch_with_your_own_model_and_data_from_a_config(slurm, tmp_path):
    need_module("sklearn")
    out = tmp_path / "out"
    done = subprocess.run(["sbatch", "--parsable", "--wait", "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out",
                           "slurm/train.sh", "--config", "examples/digits/config.yaml", "epochs=3", "progress=false",
                           f"output_dir={out}"], cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=600)
    log = job_log(tmp_path)
    assert done.returncode == 0, done.stderr + log
    assert "plan: examples.digits.model:Net on 2 processes on CPUs (gloo)" in log and log.count("plan: ") == 1
    assert history(out)["epoch"].tolist() == [1, 2, 3]


def test_the_text_example_on_slurm(slurm, tmp_path):
    """examples/text as the README gives it: a transformers model, padded and length-grouped batches."""
    out = tmp_path / "out"
    done = subprocess.run(["sbatch", "--parsable", "--wait", "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out",
                           "slurm/train.sh", "--config", "examples/text/config.yaml", "progress=false",
                           f"data.args.tokenizer_dir={tmp_path / 'tokenizers'}", f"output_dir={out}"],
                          cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    log = job_log(tmp_path)
    assert done.returncode == 0, done.stderr + log
    assert "plan: examples.text.model:encoder on 2 processes on CPUs (gloo)" in log
    assert history(out)["epoch"].tolist() == [1, 2, 3] and history(out)["val_accuracy"].iloc[-1] >= 0.90, log


def test_the_lm_example_on_slurm(slurm, tmp_path, job_folders):
    """examples/lm as the README gives it: a causal language model, its token-level loss and perplexity;
    with no output_dir, in the job's own runs/slurm-<id>."""
    done = subprocess.run(["sbatch", "--parsable", "--wait", "--gpus-per-node=0", f"--output={tmp_path}/%x-%j.out",
                           "slurm/train.sh", "--config", "examples/lm/config.yaml", "progress=false",
                           f"data.args.tokenizer_dir={tmp_path / 'tokenizers'}"],
                          cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    log = job_log(tmp_path)
    assert done.returncode == 0, done.stderr + log
    job_folders.append(done.stdout.strip())
    out = job_folder(done.stdout.strip())
    assert "plan: examples.lm.model:gpt2 on 2 processes on CPUs (gloo)" in log
    assert history(out)["epoch"].tolist() == [1, 2, 3, 4, 5] and history(out)["val_perplexity"].iloc[-1] <= 6.0, log


def test_a_killed_rank_inside_sbatch_is_restarted_without_a_requeue(slurm, tmp_path, rng):
    import signal

    from conftest import rank_processes

    longer = "data.train_size=6144"  # 24 optimizer steps an epoch, 48 in all: the kill lands 24 or more before the end
    (tmp_path / "reference").mkdir()
    reference = sbatch(slurm, tmp_path / "reference", longer)
    _, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr + job_log(tmp_path / "reference")
    target = rng.randint(12, 24)
    where = f"(SIGKILL to a rank after step {target}; TEST_SEED={TEST_SEED})"
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    job = sbatch(slurm, tmp_path, longer)
    job_id = job.stdout.readline().strip()
    deadline = time.monotonic() + 300

    def training_ranks():
        return rank_processes(1, f"output_dir={tmp_path}")

    while not ((tmp_path / "checkpoints" / "latest").exists() and _latest(tmp_path) >= target
               and len(training_ranks()) == 2):
        assert job.poll() is None and time.monotonic() < deadline, f"the job ended before step {target}"
        time.sleep(0.01)
    os.kill(training_ranks()[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=600)
    log = job_log(tmp_path)
    assert job.returncode == 0, f"{where}\n{stderr}{log}"
    assert "(restart 1 of 3)" in " ".join(log.split()) and "requeue" not in log and "SLURM_RESTART_COUNT=1" not in log, log
    assert log.count(f"slurm/train.sh: job {job_id},") == 1  # the same job, started once
    reference, mine = (load_file(str(p / "model.safetensors")) for p in (tmp_path.parent / "reference", tmp_path))
    assert all(torch.equal(reference[k], mine[k]) for k in reference), where


def _latest(out: Path) -> int:
    try:
        return int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return 0


def test_a_search_as_a_job_array_of_two_workers_survives_a_preempted_worker(slurm, tmp_path):
    """`sbatch --array=0-1 slurm/train.sh --sweep ...`: two workers share one study; the first is
    preempted (USR1, as before a time limit) inside a trial, requeued, and continues that trial."""
    need_module("sklearn")
    need_module("optuna")
    from train.tuning import study

    folder = tmp_path / "search"
    cmd = ["sbatch", "--parsable", "--wait", "--array=0-1", "--gpus-per-node=0", "--cpus-per-task=1",
           f"--output={tmp_path}/%x-%A_%a.out", "slurm/train.sh", "--sweep", "--config", "examples/digits/config.yaml",
           "--space", "examples/digits/space.yaml", "--trials", "6", "--dir", str(folder), "epochs=4",
           "checkpoint.every_steps=5", "progress=false"]
    job = subprocess.Popen(cmd, cwd=ROOT, env=dict(slurm, CPU_PROCESSES_PER_NODE="1"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    array = job.stdout.readline().strip()
    deadline = time.monotonic() + 300

    def task0_trial():  # a trial of task 0 that has saved a checkpoint
        for worker in folder.glob("trial-*/worker"):
            if worker.read_text().endswith("task 0") and (worker.parent / "checkpoints" / "latest").exists() \
                    and not (worker.parent / "model.safetensors").exists():
                return worker.parent
        return None

    while (trial := task0_trial()) is None:
        assert job.poll() is None and time.monotonic() < deadline, "task 0 ran no trial to a checkpoint"
        time.sleep(0.05)
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{array}_0"], env=slurm, check=True)
    _, stderr = job.communicate(timeout=900)
    logs = {p.name: p.read_text() for p in tmp_path.glob("train-*.out")}
    everything = "\n".join(logs.values())
    assert job.returncode == 0, stderr + everything
    task0 = flat(next(text for name, text in logs.items() if name.endswith("_0.out")))
    assert "requeueing job" in task0 and "SLURM_RESTART_COUNT=1: resuming" in task0, task0
    number = int(trial.name.split("-")[1])
    assert f"trial {number} continues" in task0, task0  # its own worker took it back
    rows = pd.read_csv(folder / "trials.csv")
    assert len(rows) == 6 and set(rows["state"]) <= {"COMPLETE", "PRUNED"}, rows
    assert len(study.load(folder).get_trials(deepcopy=False)) == 6  # no trial asked for twice
    for row in rows.itertuples():
        log = flat((folder / f"trial-{row.number:04d}" / "trial.log").read_text())
        assert log.count("plan: ") - log.count("resuming from") == 1, log  # each trial started once
    resumed = flat((trial / "trial.log").read_text())
    assert "preempted: stopped by SIGUSR1" in resumed and "resuming from" in resumed
    assert history(trial)["epoch"].tolist() == list(range(1, len(history(trial)) + 1))
