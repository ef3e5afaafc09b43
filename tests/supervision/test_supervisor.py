"""Every ending of the supervisor, with real processes: a crash while a restarted job starts up is
healed, a bug is not retried, each way it ends says one line with the README's exit code, a
launcher that exits 0 is a success, every wrapper takes a script first, and the supervisor's death
takes the training with it. Kill points are seeded and printed in failure messages."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import (TEST_SEED, MNIST, PYTHON, ROOT, assert_same_run, assert_saved_and_exited_75, descendants, flat, latest_step,
                      rank_processes, reports_of, start_process, wait_for)

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

LAUNCH = ROOT / "launch"
SMOKE = ["epochs=2", "data.train_size=6144", "data.val_size=1001", f"data.path={MNIST}",
         "checkpoint.every_steps=3", "progress=false"]
TINY = ["epochs=1", "data.train_size=256", "data.val_size=128", f"data.path={MNIST}", "progress=false"]


def wrapper(name, *args, **env):
    return start_process([str(LAUNCH / name), *map(str, args)], dict(os.environ, PYTHONUNBUFFERED="1", **env))


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


class Output:
    """A process's merged output, read by a thread, so that a test can watch it while it runs."""

    def __init__(self, proc):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        self.thread.start()

    def text(self) -> str:
        self.thread.join(timeout=60)
        return "".join(self.lines)


def supervisor_lines(log: str) -> list[str]:
    """The supervisor's lines, each unwrapped (it wraps at 100 columns with a 4-space indent)."""
    return [flat(m) for m in re.findall(r"supervisor: .*(?:\n    .*)*", log)]


def test_a_crash_while_the_restarted_job_starts_up_is_restarted_too(tmp_path, rng):
    env = dict(OMP_NUM_THREADS="1")
    reference = wrapper("cpu2.sh", *SMOKE, f"output_dir={tmp_path / 'reference'}", **env)
    log = finish(reference)
    assert reference.returncode == 0, log
    target, first, second = rng.randint(25, 40), rng.randint(0, 1), rng.randint(0, 1)
    where = f"(SIGKILL to rank {first} after step {target}, then to rank {second} of the restarted job as it " \
            f"starts; TEST_SEED={TEST_SEED})"
    out = tmp_path / "out"
    proc = wrapper("cpu2.sh", *SMOKE, f"output_dir={out}", **env)
    output = Output(proc)
    ranks = lambda: rank_processes(proc.pid, "main.py")  # noqa: E731 (not the plot helper: it has RANK too)
    wait_for(lambda: latest_step(out) >= target and len(ranks()) == 2, proc, f"step {target} {where}")
    old = ranks()
    os.kill(old[first], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while not ((new := ranks()) and len(new) == 2 and not set(new) & set(old)):
        assert time.monotonic() < deadline and proc.poll() is None, f"no restarted ranks {where}\n{output.text()}"
        time.sleep(0.005)
    os.kill(new[second], signal.SIGKILL)  # it is still importing torch: seconds before its first batch
    proc.wait(timeout=600)
    log = output.text()
    assert proc.returncode == 0, f"{where}\n{log}"
    lines = supervisor_lines(log)
    assert re.search(rf"rank {first} exited \(SIGKILL\) at epoch 2 batch \d+; restarting from step-\d{{8}} "
                     r"\(restart 1 of 3\)", lines[0]), f"{where}\n{log}"
    assert re.search(r"exited \(SIGKILL\) while starting up; restarting from step-\d{8} \(restart 2 of 3\)",
                     lines[1]), f"{where}\n{log}"
    assert lines[2] == "supervisor: finished (exit 0)", f"{where}\n{log}"
    assert re.fullmatch(r"supervisor: finished after 2 failures; [\d.]+ s lost per failure; goodput 0\.\d\d",
                        lines[3]) and len(lines) == 4, f"{where}\n{log}"
    assert_same_run(out, tmp_path / "reference", context=where)


def test_a_bug_is_tried_twice_then_named_not_restarted(tmp_path):
    proc = wrapper("one.sh", *TINY, "data.train_size=2048", "model=tests.helpers.bad_things:FailsAtThirdBatch",
                   f"output_dir={tmp_path}")
    log = finish(proc)
    assert proc.returncode == 1, log
    assert log.count("Traceback") == 2, log  # one attempt to tell a fault from a bug, then no more
    assert supervisor_lines(log) == [
        "supervisor: rank 0 failed (ValueError: a bug at the third batch) at epoch 1 batch 3; restarting "
        "(restart 1 of 3)",
        "supervisor: rank 0 failed twice at epoch 1 batch 3 with ValueError: a bug at the third batch; "
        "a bug, not a fault: not restarting"], log


def test_each_ending_says_one_line_with_its_exit_code(tmp_path):
    hello = tmp_path / "hello.py"
    hello.write_text("print('hello from a script')\n")
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nimport train\nsys.exit(3)\n")
    cases = {  # name: (command, env, exit code, the supervisor's line)
        "finished": (["one.sh", *TINY, f"output_dir={tmp_path / 'ok'}"], {}, 0, "finished (exit 0)"),
        "bad input": (["one.sh", *TINY, "data.num_classes=5", f"output_dir={tmp_path / 'bad'}"], {}, 2,
                      "exit 2 (bad input): the job ended on purpose; not restarting"),
        "restarts exhausted": (["one.sh", *TINY, "data.train_size=2048", f"output_dir={tmp_path / 'bug'}",
                                "model=tests.helpers.bad_things:FailsAtThirdBatch"], {"MAX_RESTARTS": "0"}, 1,
                               "rank 0 failed (ValueError: a bug at the third batch) at epoch 1 batch 3; no "
                               "restarts left (max_restarts=0), giving up"),
        "script's own exit": (["one.sh", str(exits)], {}, 3, "rank 0 exited with 3 by itself, not a crash; "
                                                             "not restarting"),
        "a script that only prints": (["one.sh", str(hello)], {}, 0, "finished (exit 0)"),
        "--help": (["one.sh", "--help"], {}, 0, "finished (exit 0)"),
        "preflight": (["one.sh", *TINY, "preflight=true", f"output_dir={tmp_path / 'pf'}"], {}, 0,
                      "finished (exit 0)"),
        "a NaN loss": (["one.sh", *TINY, "model=tests.helpers.bad_things:NaNAtSecondBatch",
                        f"output_dir={tmp_path / 'nan'}"], {}, 3,
                       "exit 3 (the loss became NaN or infinite): the job ended on purpose; not restarting"),
        "a failed preflight": (["one.sh", *TINY, "preflight=true", "model=tests.helpers.bad_things:FailsAtThirdBatch",
                                f"output_dir={tmp_path / 'pf-bad'}"], {}, 1,
                               "exit 1 (preflight found a problem): the job ended on purpose; not restarting"),
        "preflight, 2 processes": (["cpu2.sh", *TINY, "preflight=true", f"output_dir={tmp_path / 'pf2'}"],
                                   {"OMP_NUM_THREADS": "1"}, 0, "finished (exit 0)"),
    }
    logs = {}
    for name, (command, env, code, line) in cases.items():
        proc = wrapper(*command, **env)
        logs[name] = log = finish(proc)
        assert proc.returncode == code, f"{name}: exit {proc.returncode}\n{log}"
        assert supervisor_lines(log)[-1:] == [f"supervisor: {line}"], f"{name}\n{log}"
    assert "hello from a script" in logs["a script that only prints"]
    assert all(log.count("plan: ") <= 1 for log in logs.values())  # a deliberate end is not run again
    assert "error: preflight failed at checkpoint round trip: ValueError: a bug at the third batch" in logs[
        "a failed preflight"]
    assert "preflight ok: 2 training" in logs["preflight, 2 processes"]
    launcher = subprocess.run([PYTHON, str(ROOT / "train" / "supervisor.py"), "--", "accelerate", "launch",
                               "--no-such-flag", str(hello)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert launcher.returncode == 2, launcher.stderr
    assert supervisor_lines(launcher.stderr) == [
        "supervisor: the launcher failed before any training process started (exit 2); not restarting"], \
        launcher.stderr


def test_bf16_and_fp16_wrappers_take_a_script_first(tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text("import os, sys\nprint('script ran with', sys.argv[1:], os.environ.get('ACCELERATE_MIXED_PRECISION'))\n")
    proc = wrapper("bf16.sh", script, "--my-flag", "1")
    log = finish(proc, timeout=120)
    assert proc.returncode == 0, log
    assert "script ran with ['--my-flag', '1'] bf16" in log, log
    fp16 = subprocess.run([str(LAUNCH / "fp16.sh"), str(script)], capture_output=True, text=True, timeout=60)
    assert fp16.returncode == 2 and "no GPU found" in fp16.stderr  # on this CPU machine; the script comes first


def test_a_killed_supervisor_of_one_process_leaves_no_training_behind(tmp_path):
    proc = wrapper("one.sh", *SMOKE, "epochs=20", f"output_dir={tmp_path}")
    wait_for(lambda: latest_step(tmp_path) >= 3, proc, "training to start")
    below = [pid for pid in descendants(proc.pid) if "main.py" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert below, "no training process found"
    reports, before = reports_of(below), latest_step(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the supervisor itself
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in below) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in below), "a training process outlived its supervisor"
    assert_saved_and_exited_75(reports, 1, tmp_path, before)  # as the README says: it saved and exited 75


def test_a_process_hung_after_training_finished_is_ended_and_the_job_finishes():
    proc = wrapper("cpu2.sh", ROOT / "tests" / "helpers" / "lingers.py", TRAIN_FINISHED_GRACE_S="3")
    started = time.monotonic()
    out = finish(proc, timeout=120)
    assert proc.returncode == 0, out
    assert "finished (exit 0; rank(s) 1 still there 3 s after training finished, ended)" in supervisor_lines(out)[-1]
    assert time.monotonic() - started < 60, out


def test_a_hangup_counts_as_sigterm_the_job_saves_and_ends_with_75(tmp_path):
    """SIGHUP (the terminal closed) to the supervisor: passed on as SIGTERM, so the training saves
    a checkpoint and ends with 75, not restarted; the same command resumes from that checkpoint."""
    proc = wrapper("cpu2.sh", *SMOKE, f"output_dir={tmp_path}", OMP_NUM_THREADS="1")
    wait_for(lambda: latest_step(tmp_path) >= 6 and len(rank_processes(proc.pid, "main.py")) == 2, proc,
             "training to start")
    before = latest_step(tmp_path)
    os.kill(proc.pid, signal.SIGHUP)
    log = finish(proc)
    assert proc.returncode == 75, log
    saved = latest_step(tmp_path)
    assert saved > before and re.search(rf"preempted: stopped by SIGTERM at epoch \d batch \d+; checkpoint "
                                        rf"{tmp_path}/checkpoints/step-{saved:08d}", flat(log)), log
    assert supervisor_lines(log)[-1] == ("supervisor: exit 75 (preempted; a checkpoint was saved): the job ended on "
                                         "purpose; not restarting"), log
    again = wrapper("cpu2.sh", *SMOKE, f"output_dir={tmp_path}", OMP_NUM_THREADS="1")
    log = finish(again)
    assert again.returncode == 0 and f"resuming from {tmp_path}/checkpoints/step-{saved:08d}" in flat(log), log
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1, 2]
