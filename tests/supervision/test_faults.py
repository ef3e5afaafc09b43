"""Faults survived without a human, with real processes: a crashed rank and a stalled rank are
restarted by the supervisor from the latest checkpoint (one node, and two "nodes" over loopback);
a damaged newest checkpoint is skipped; a crafted one is refused before anything of it is loaded;
a full disk during a save keeps the previous checkpoint; a second run in a live run's folder
refuses. Kill points are seeded and printed in failure messages."""

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from train.base.paths import memory_checkpoints

from conftest import (TEST_SEED, MNIST, PYTHON, ROOT, assert_same_run, assert_saved_and_exited_75, flat, kill_group, latest_step,
                      descendants, free_ports, rank_processes, read_until, reports_of, start_process, wait_for)

pytestmark = pytest.mark.slow  # real processes, full runs: `make test-fast` leaves these out

MAIN = ROOT / "train" / "main.py"
SMOKE = ["epochs=2", "data.train_size=2048", "data.val_size=1001", f"data.path={MNIST}",
         "checkpoint.every_steps=3", "progress=false"]


def templates(proc) -> list[int]:
    """The supervisor's warm template below `proc` (its forks, the training processes and rank 0's
    drawing helper, have its command line but not its name)."""
    found = []
    for pid in descendants(proc.pid):
        try:
            if "template.py" in Path(f"/proc/{pid}/cmdline").read_text() and \
                    not Path(f"/proc/{pid}/comm").read_text().startswith(("train-rank-", "train-plots")):
                found.append(pid)
        except OSError:  # ended meanwhile
            pass
    return found


def named(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:  # ended meanwhile
        return False


def cpu2(out, *extra, timeout=600):
    """launch/cpu2.sh (two gloo ranks under the supervisor), output merged."""
    return start_process([str(ROOT / "launch" / "cpu2.sh"), *SMOKE, f"output_dir={out}", *extra],
                         dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


def ranks(proc) -> list[int]:
    """The training processes below a wrapper (the supervisor, the launcher, the ranks), by rank."""
    return rank_processes(proc.pid)


STALL = ["data.train_size=6144"]  # 24 optimizer steps an epoch per rank: the stall lands well before the end


def uninterrupted(tmp_path_factory, name: str, settings: list) -> Path:
    """The output folder of a run under launch/cpu2.sh with `settings`, nothing done to it."""
    out = tmp_path_factory.mktemp(name)
    proc = cpu2(out, *settings)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    return out


@pytest.fixture(scope="module")
def reference_two(tmp_path_factory):
    return uninterrupted(tmp_path_factory, "uninterrupted-two", STALL)


LONGER = ["data.train_size=12288"]  # 48 optimizer steps an epoch per rank


@pytest.fixture(scope="module")
def reference_longer(tmp_path_factory):
    return uninterrupted(tmp_path_factory, "uninterrupted-longer", LONGER)


def test_a_killed_rank_is_restarted_and_the_run_ends_exactly(tmp_path, rng, reference_longer):
    # the kill lands at least 24 steps (over a second) before the end of epoch 2: with less, a CI
    # machine once delivered it after training had finished
    target, victim = rng.randint(50, 72), rng.randint(0, 1)  # a step of epoch 2, well before its end
    where = f"(SIGKILL to rank {victim} after step {target}; TEST_SEED={TEST_SEED})"
    proc = cpu2(tmp_path, *LONGER)
    wait_for(lambda: latest_step(tmp_path) >= target and len(ranks(proc)) == 2, proc, f"step {target} {where}")
    os.kill(ranks(proc)[victim], signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{where}\n{log}"
    restart = re.search(r"supervisor: rank (\d) exited \(SIGKILL\) at epoch 2 batch \d+; restarting from "
                        r"step-\d{8} \(restart 1 of 3\)", flat(log))
    assert restart and int(restart.group(1)) == victim, f"{where}\n{log}"
    assert "Traceback" not in log, log
    assert_same_run(tmp_path, reference_longer, context=where)
    # what it cost: one line, and the figures beside the history; the restart was forked warm
    cost = re.search(r"supervisor: finished after 1 failure; ([\d.]+) s lost per failure; goodput ([\d.]+)", flat(log))
    figures = json.loads((tmp_path / "failures.json").read_text())
    assert cost and figures["failures"] == 1 and figures["restarts"][0]["warm"], f"{where}\n{log}\n{figures}"
    assert float(cost.group(1)) == round(figures["lost_s_per_failure"], 1) > 0, figures
    assert 0 < figures["goodput"] < 1 and figures["lost_s"] < figures["wall_s"], figures
    phases = figures["restarts"][0]
    assert 0 < phases["processes_started_s"] <= phases["state_loaded_s"] <= phases["first_step_s"], phases


def test_a_template_that_cannot_fork_leaves_the_restart_to_the_launcher(tmp_path, rng, reference_longer):
    target, victim = rng.randint(50, 72), rng.randint(0, 1)
    where = f"(SIGKILL to rank {victim} after step {target}, the template stopped; TEST_SEED={TEST_SEED})"
    (tmp_path / "tmp").mkdir()  # where the supervisor makes the template's folder (its `ready` file)
    proc = start_process([str(ROOT / "launch" / "cpu2.sh"), *SMOKE, *LONGER, f"output_dir={tmp_path / 'out'}"],
                         dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp")))
    out = tmp_path / "out"
    wait_for(lambda: latest_step(out) >= target and len(ranks(proc)) == 2 and templates(proc) and
             list((tmp_path / "tmp").glob("train-template-*/ready")), proc, f"step {target} {where}")
    os.kill(templates(proc)[0], signal.SIGSTOP)  # alive and ready, but it never answers
    os.kill(ranks(proc)[victim], signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{where}\n{log}"
    assert "supervisor: the warm template could not fork the processes (timed out); starting them with the " \
           "launcher command" in flat(log), f"{where}\n{log}"
    assert not json.loads((out / "failures.json").read_text())["restarts"][0]["warm"]
    assert_same_run(out, reference_longer, context=where)


@pytest.mark.parametrize("memory", [False, True], ids=["disk", "memory"])
def test_three_failures_one_while_a_restart_starts_up_and_the_run_ends_exactly(tmp_path, rng, reference_longer, memory):
    first, third = rng.randint(10, 30), rng.randint(50, 72)
    victims = [rng.randint(0, 1) for _ in range(3)]
    where = f"(SIGKILL to rank {victims[0]} after step {first}, to rank {victims[1]} of the restarted job as it " \
            f"starts, to rank {victims[2]} after step {third}; TEST_SEED={TEST_SEED})"
    # with memory checkpoints every step, disk ones every 3 (as the reference): the kills land between
    extra = ["checkpoint.memory_every_steps=1"] if memory else []
    proc = cpu2(tmp_path, *LONGER, *extra)

    def ahead():  # with memory on, a kill where the memory checkpoint is newer than the disk's
        return not memory or latest_step(tmp_path, memory=True) > latest_step(tmp_path)

    wait_for(lambda: latest_step(tmp_path) >= first and ahead() and len(ranks(proc)) == 2, proc, f"step {first} {where}")
    old = ranks(proc)
    os.kill(old[victims[0]], signal.SIGKILL)
    wait_for(lambda: len(new := ranks(proc)) == 2 and not set(new) & set(old), proc, f"the restart {where}")
    os.kill(ranks(proc)[victims[1]], signal.SIGKILL)
    wait_for(lambda: latest_step(tmp_path) >= third and ahead() and len(ranks(proc)) == 2, proc, f"step {third} {where}")
    os.kill(ranks(proc)[victims[2]], signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{where}\n{log}"
    assert "(restart 3 of 3)" in flat(log) and "while starting up" in flat(log), f"{where}\n{log}"
    assert re.search(r"supervisor: finished after 3 failures; [\d.]+ s lost per failure; goodput 0\.\d\d", flat(log)), log
    assert_same_run(tmp_path, reference_longer, context=where)
    if memory:  # resumed from memory at least once, and nothing left there
        assert re.search(r"restarting from step-\d{8} in memory", flat(log)), f"{where}\n{log}"
        assert "resuming from the memory checkpoint" in log, f"{where}\n{log}"
        assert not memory_checkpoints(tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("stopped", [0, 1])
def test_a_stopped_rank_is_named_its_stacks_kept_and_the_run_ends_exactly(tmp_path, reference_two, stopped):
    # no collective timeout shortened: the supervisor sees the stopped process (30 minutes by default)
    proc = start_process([str(ROOT / "launch" / "cpu2.sh"), *SMOKE, f"output_dir={tmp_path}", *STALL],
                         dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", STALL_AFTER_S="4"))
    wait_for(lambda: latest_step(tmp_path) >= 9 and len(ranks(proc)) == 2, proc, "step 9")
    pids = ranks(proc)
    os.kill(pids[stopped], signal.SIGSTOP)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    line = re.search(rf"supervisor: rank {stopped} stalled: pid {pids[stopped]} made no progress for (\d+) s at epoch "
                     rf"\d batch \d+ \(stopped\); the stacks of its processes in (\S+); restarting from step-\d{{8}} "
                     r"\(restart 1 of 3\)", flat(log))
    assert line and int(line.group(1)) >= 4, log
    stacks = Path(line.group(2))
    assert stacks == tmp_path / "stacks" / "attempt-1.txt", log
    sections = stacks.read_text().split("== ")[1:]
    heads = sorted(section.split("\n", 1)[0] for section in sections)
    assert [h.split(":")[0].split(" (")[0] for h in heads] == ["rank 0", "rank 1"], heads
    for section in sections:  # each a Python stack of the training step's process, innermost first
        assert "File " in section and "train/main.py" in section and "in fit" in section, section
    assert_same_run(tmp_path, reference_two)


def test_a_stalled_rank_ends_the_job_within_the_timeout_and_it_recovers(tmp_path, reference_two):
    timeout = 5
    proc = cpu2(tmp_path, *STALL, f"collective_timeout_s={timeout}")
    wait_for(lambda: latest_step(tmp_path) >= 9 and len(ranks(proc)) == 2, proc, "step 9")
    stopped = ranks(proc)[1]
    os.kill(stopped, signal.SIGSTOP)  # a hung GPU, a stuck NFS read, a deadlock
    started = time.monotonic()
    seen = read_until(proc, lambda text: "restarting" in flat(text), timeout=timeout + 240)  # the supervisor's line
    waited = time.monotonic() - started
    rest, _ = proc.communicate(timeout=600)
    log = seen + rest
    # the timeout, the supervisor's 10 s of grace, then the processes' teardown: well under a minute
    # more, also with another job on the cores (a stall held until the job's end would be hours)
    assert waited < timeout + 60, f"{waited:.0f} s before the restart\n{log}"
    assert proc.returncode == 0, log
    assert "lost contact with another process (Timed out" in log and "rank 1 stalled" in flat(log), log
    assert_same_run(tmp_path, reference_two)


def two_nodes(out, port: int, *extra, staging=("", "")):
    """launch/multinode.sh twice over loopback (one gloo process a node), each "node" with its own
    memory for memory checkpoints (`staging`: its TRAIN_STAGING_DIR), output merged."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MAIN_PORT=str(port))
    return [start_process([str(ROOT / "launch" / "multinode.sh"), str(rank), "2", "127.0.0.1", *SMOKE, *LONGER,
                           f"output_dir={out}", *extra], dict(env, TRAIN_STAGING_DIR=str(staging[rank])))
            for rank in (0, 1)]


@pytest.fixture(scope="module")
def reference_nodes(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted-nodes")
    procs = two_nodes(out, free_ports())
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    return out


def memory_step(out: Path, staging: Path) -> int:
    """The newest memory checkpoint's step of the run in `out` on the node whose memory is `staging`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAIN_STAGING_DIR", str(staging))
        return latest_step(out, memory=True)


@pytest.mark.parametrize("memory", [False, True], ids=["disk", "memory"])
def test_two_nodes_over_loopback_restart_together(tmp_path, rng, reference_nodes, memory):
    target = rng.randint(50, 72)  # a step of epoch 2 (48 an epoch), well before its end
    where = f"(kill after step {target}; TEST_SEED={TEST_SEED})"
    out, staging = tmp_path / "out", [tmp_path / "node-0-memory", tmp_path / "node-1-memory"]
    # with memory checkpoints every step (disk ones every 3, as the reference), each node its own copy:
    # the kill lands where both nodes' memory checkpoints are newer than the disk's
    procs = two_nodes(out, free_ports(), *(["checkpoint.memory_every_steps=1"] if memory else []), staging=staging)

    def ahead():
        return not memory or all(memory_step(out, node) > latest_step(out) for node in staging)

    wait_for(lambda: latest_step(out) >= target and ahead() and ranks(procs[1]), procs[0], f"step {target} {where}")
    os.kill(ranks(procs[1])[0], signal.SIGKILL)  # the rank of node 1
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert all("(restart 1 of 3)" in flat(log) for log in logs), logs
    assert_same_run(out, reference_nodes, context=where)
    if memory:  # both nodes resumed from their own memory; the restart lines said what they had
        assert all(re.search(r"restarting from step-\d{8} in memory if every node holds it, else step-\d{8}", flat(log))
                   for log in logs), logs
        assert "resuming from the memory checkpoint" in flat(logs[0]), f"{where}\n{logs[0]}"
        assert not any(memory_checkpoints(out / "checkpoints").name in os.listdir(node) for node in staging if node.exists())


def killed_midway(out, target, *extra):
    proc = start_process([PYTHON, str(MAIN), *SMOKE, f"output_dir={out}", "checkpoint.keep_last=3", *extra],
                         dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for(lambda: latest_step(out) >= target, proc, f"a checkpoint at step {target}")
    kill_group(proc)
    return latest_step(out)


def run_main(out, *extra):
    return subprocess.run([PYTHON, str(MAIN), *SMOKE, f"output_dir={out}", "checkpoint.keep_last=3", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted-one")
    done = run_main(out)
    assert done.returncode == 0, done.stderr
    return out


def test_a_damaged_newest_checkpoint_is_skipped_with_one_line(tmp_path, reference_one):
    step = killed_midway(tmp_path, 20)
    checkpoints = tmp_path / "checkpoints"
    newest, previous = f"step-{step:08d}", sorted(p.name for p in checkpoints.glob("step-*"))[-2]
    weights = checkpoints / newest / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])  # what a broken disk leaves
    refused = run_main(tmp_path, f"resume={checkpoints / newest}")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: checkpoint {checkpoints / newest} is damaged (model.safetensors: 100 bytes, expected {size}); "
        f"give another checkpoint, or resume=auto"], refused.stderr
    again = run_main(tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"checkpoint {newest} is damaged (model.safetensors: 100 bytes, expected {size}); resuming from " \
           f"{previous}" in again.stdout
    assert_same_run(tmp_path, reference_one)


def test_a_memory_checkpoint_newer_than_the_disks_is_resumed_from_then_removed(tmp_path, reference_one):
    # no supervisor: a crashed process leaves its memory checkpoint for the next run in the folder
    memory = memory_checkpoints(tmp_path / "checkpoints")
    settings = ["checkpoint.every_steps=5", "checkpoint.memory_every_steps=1"]
    proc = start_process([PYTHON, str(MAIN), *SMOKE, f"output_dir={tmp_path}", *settings],
                         dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for(lambda: latest_step(tmp_path) >= 5 and latest_step(tmp_path, memory=True) > 5, proc,
             "a memory checkpoint after step 5")
    kill_group(proc)
    disk, newer = latest_step(tmp_path), (memory / "latest").read_text().strip()
    assert int(newer.split("-")[1]) > disk, (newer, disk)
    assert [p.name for p in memory.glob("step-*")] == [newer]  # the newest only
    again = run_main(tmp_path, *settings)
    assert again.returncode == 0, again.stderr
    assert f"resuming from the memory checkpoint {newer} ({memory}), newer than step-{disk:08d} on disk" in again.stdout
    assert not memory.exists()  # the run ended: its state is on disk
    assert_same_run(tmp_path, reference_one)


class Marker:
    """Unpickled, it would create a file: what a crafted checkpoint does to whoever loads it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_checkpoint_is_refused_before_any_of_it_runs(tmp_path, reference_one):
    import torch

    step = killed_midway(tmp_path, 9)
    folder = tmp_path / "checkpoints" / f"step-{step:08d}"
    marker = tmp_path / "pwned"
    for name in ("scheduler.pt", "random_states_0.pkl", "optimizer.bin", "callbacks.pt", "custom_checkpoint_0.pkl"):
        torch.save({"state": Marker(str(marker))}, folder / name)
    # the attacker could rewrite the manifest too: sizes and checksums then match
    from train.saving.storage import write_manifest

    write_manifest(folder)
    refused = run_main(tmp_path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert re.fullmatch(r"error: checkpoint file .*/callbacks\.pt would run code when loaded \(it imports "
                        r"io\.open(, \S+)*\); refusing it: resume from a checkpoint you trust", lines[0]), lines
    assert not marker.exists()
    # without a rewritten manifest the files are merely damaged: resume=auto takes an older checkpoint
    (folder / "manifest.json").write_text(json.dumps({"files": {"optimizer.bin": {"size": 1, "crc32": 0}}}))
    again = run_main(tmp_path)
    assert again.returncode == 0 and "is damaged" in again.stdout, again.stderr
    assert not marker.exists()
    assert_same_run(tmp_path, reference_one)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_in_a_live_runs_folder_refuses_and_a_dead_ones_lock_does_not(tmp_path, reference_one):
    first = start_process([PYTHON, str(MAIN), *SMOKE, f"output_dir={tmp_path}", "checkpoint.keep_last=3"],
                          dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for(lambda: latest_step(tmp_path) >= 6, first, "the first run's checkpoints")
    os.kill(first.pid, signal.SIGSTOP)  # alive but still: its folder holds still while we look
    before = snapshot(tmp_path)
    second = run_main(tmp_path)
    assert second.returncode == 2, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"error: output_dir {tmp_path} is in use by pid {first.pid} on \S+ since [\d:\- ]+; wait for it to end, "
        r"or pick another output_dir", lines[0]), lines
    assert snapshot(tmp_path) == before, "the refused run changed the folder"
    kill_group(first)  # a SIGKILLed holder: its lock must not block the rerun
    again = run_main(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in flat(again.stdout)
    assert_same_run(tmp_path, reference_one)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(small_disk, reference_one):
    out = small_disk / "out"
    full = run_main(out)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 74 and len(lines) == 1, full.stdout + full.stderr
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert re.fullmatch(rf"error: could not save checkpoint step-\d{{8}} to {out}/checkpoints/ \(No space left on "
                        rf"device[^;]*\); [\d.]+ MB free; make room and run the same command again to resume; the last "
                        rf"good checkpoint is {out}/checkpoints/{latest} \(latest\)", lines[0]), lines
    assert not list((out / "checkpoints").glob(".tmp-*")), "the partial save was left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    again = run_main(out)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {out}/checkpoints/{latest}" in flat(again.stdout)
    assert_same_run(out, reference_one)


def test_a_stop_signal_during_start_up_is_not_lost(tmp_path):
    """USR1 reaches the supervisor while the training process is still importing (it ignores USR1
    until its handler is in place): the supervisor passes it on once the process listens."""
    proc = start_process([str(ROOT / "launch" / "one.sh"), *SMOKE, f"output_dir={tmp_path}"],
                         dict(os.environ, PYTHONUNBUFFERED="1"))
    time.sleep(1.0)  # python and torch are still loading
    os.kill(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out
    # passed on once the handler is in place: the supervisor polls every 0.1 s, in which a few
    # batches of 15 ms may go by; lost, the run would have finished both epochs with exit 0
    stopped = re.search(r"preempted: stopped by SIGUSR1 at epoch 1 batch (\d+);", flat(out))
    assert stopped and int(stopped.group(1)) < 16, out  # in epoch 1, before its last batch
    assert latest_step(tmp_path) == int(stopped.group(1))
    assert "supervisor: exit 75 (preempted; a checkpoint was saved)" in flat(out)


@pytest.mark.parametrize("restarted", [False, True], ids=["launched", "forked"])
def test_a_killed_supervisor_leaves_no_training_behind(tmp_path, restarted):
    # launched: the first attempt's processes, under accelerate launch; forked: a warm restart's,
    # from the supervisor's template (they get SIGTERM when the template dies with the supervisor)
    proc = cpu2(tmp_path, "epochs=20")

    def template():
        return templates(proc)

    wait_for(lambda: latest_step(tmp_path) >= 3 and len(ranks(proc)) == 2 and template(), proc, "training to start")
    if restarted:
        old, killed_at = ranks(proc), latest_step(tmp_path)
        os.kill(old[1], signal.SIGKILL)
        wait_for(lambda: len(new := ranks(proc)) == 2 and not set(new) & set(old) and
                 latest_step(tmp_path) > killed_at, proc, "the warm restart to train")
        assert all(Path(f"/proc/{pid}/comm").read_text().startswith("train-rank-") for pid in ranks(proc))
    left = ranks(proc) + template()
    assert len(left) == 3, f"not two training processes and a warm template: {left}"
    if restarted:  # rank 0's drawing helper, forked from it (matplotlib imported by the template): it goes too
        drawing = [pid for pid in descendants(proc.pid) if named(pid, "train-plots")]
        assert len(drawing) == 1, f"rank 0's drawing helper was not forked: {drawing}"
        left += drawing
    reports, before = reports_of(left[:2]), latest_step(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the supervisor itself: its launcher gets SIGTERM from the kernel
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in left) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in left), "training processes or the template left running"
    assert_saved_and_exited_75(reports, 2, tmp_path, before)  # they saved on their way out (SIGTERM: preempted)
