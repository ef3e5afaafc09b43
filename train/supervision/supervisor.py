"""Supervise a training job: restart it after a crash, keep its exit codes and its output honest.

    python train/supervisor.py [--max-restarts N] [--grace S] [--filter-launcher] -- COMMAND ...

COMMAND is a launcher (`accelerate launch ...`) or a script. Each training process reports to the
supervisor through a small file (`train.supervision.reports`: written at `import train`, when training
starts and when it ends): its pid, its output folder, and how it ended. When the job ends, the
supervisor decides, and says why in one line on stderr whatever it decides:

- the launcher exited 0: exit 0 (a training run, a preflight, `--help`, any script);
- a process ended on purpose (it raised one of `train.base.errors`' run errors: bad input 2, NaN 3,
  disk full 74, preempted 75, Ctrl-C 130, a failed preflight 1; its record says `final`): exit
  with that code, no restart (the process has said why in one line);
- no process ever started (the launcher's own error, a bad command line): the launcher's code;
- the script exited by itself without a crash (its own `sys.exit`): its code, no restart;
- anything else is a crash (a process killed by a signal or the OOM killer, an exception, a lost
  peer, a stalled peer whose collective timed out), also while a restarted job starts up: one
  line naming it, then the same command again, which resumes from the latest checkpoint, up to N
  times (`restart 1 of 3`); then exit 1. An exception raised by the training code at the same
  epoch and batch as in the attempt before is a bug, not a fault: exit 1, no more restarts.

Once one process has failed, the others get `--grace` seconds to end by themselves (they do, within
a few seconds, when a peer is gone); then the whole process tree is killed, stopped processes
included, so a stalled rank cannot hold the job. SIGINT, SIGTERM and SIGUSR1 reaching the
supervisor are passed to the training processes (the launcher runs in a session of its own and
ignores USR1, so it neither sees a terminal's Ctrl-C nor dies of SLURM's USR1). A stop signal that
arrives before a process has started training is sent to it again once it has (until then it
may ignore USR1); no restart follows a stop signal. SIGHUP counts as SIGTERM. Should the
supervisor itself die, the launcher gets SIGTERM (the kernel's parent-death signal).

torchrun's own restarts (`--max_restarts`) were tried first: after a rank was killed the restarted
ranks never reconnected (gloo's connectFullMesh refused) and they cannot tell a deliberate exit from
a crash, so the supervisor restarts the whole launcher instead. Accelerate's multi-process launcher
ends every failed job with torchrun's traceback and error report; with `--filter-launcher` the
launcher's own lines are held back (`train.supervision.launcher_filter`; shown only when no training process
ever started) while the training processes' output passes through. Only the standard library is
imported: the supervisor starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from train.base.errors import DELIBERATE_MEANINGS
from train.base.text import wrapped
from train.supervision.launcher_filter import LauncherFilter  # noqa: E402
from train.supervision.attempts import Ending, failures, resumes_from, what_happened, repeated  # noqa: E402,F401
from train.supervision.reports import DIR_ENV, MAX_ENV, RESTART_ENV, alive, die_with_parent  # noqa: E402

# a process may take this long to exit after training finished (a tracker's upload); the tests shorten it
FINISHED_GRACE_S = float(os.environ.get("TRAIN_FINISHED_GRACE_S", 300))
MEANINGS = DELIBERATE_MEANINGS  # what a deliberate end's exit code means (declared on the error classes)


# ------------------------------------------------------------------------ the supervisor's side
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Supervisor:
    def __init__(self, command, max_restarts: int, grace: float, filter_launcher: bool, say=None):
        self.command, self.max_restarts, self.grace = command, max_restarts, grace
        self.filter_launcher = filter_launcher
        self.say = say or (lambda text: print(wrapped(f"supervisor: {text}"), file=sys.stderr, flush=True))
        self.signals: list[int] = []  # received, not yet passed on
        self.stopped_by = 0  # the first stop signal received
        self.told: set[int] = set()  # processes that were sent a stop signal in this attempt
        self.hung: list[int] = []  # ranks ended because they lingered after training finished

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        self.stopped_by = self.stopped_by or signum

    def _on_hangup(self, signum, frame):
        self._on_signal(signal.SIGTERM, frame)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        restart, previous_failure, output_dirs = 0, None, []
        while True:
            with tempfile.TemporaryDirectory(prefix="train-supervisor-") as folder:
                ending = self._attempt(Path(folder), restart)
            # an attempt that died starting up never said where it writes: the earlier ones did
            output_dirs = [r["output_dir"] for r in ending.records if r.get("output_dir")] or output_dirs
            if ending.code is not None:
                self.say(ending.why)
                return ending.code
            same = repeated(ending.failure, previous_failure)
            if same is not None:
                self.say(f"{same}; a bug, not a fault: not restarting")
                return 1
            previous_failure = ending.failure  # one retry tells a fault from a bug
            if restart >= self.max_restarts:
                self.say(f"{ending.why}; no restarts left (max_restarts={self.max_restarts}), giving up")
                return 1
            restart += 1
            self.say(f"{ending.why}; restarting{resumes_from(output_dirs)} (restart {restart} of "
                     f"{self.max_restarts})")
            time.sleep(2)  # let the other nodes' processes end and free their ports
            if self.stopped_by:  # asked to stop while waiting: do not start again
                self.say(f"stopped by {signal.Signals(self.stopped_by).name} between attempts; exit "
                         f"{128 + self.stopped_by}")
                return 128 + self.stopped_by

    def _attempt(self, folder: Path, restart: int) -> "Ending":
        """Run the command once and say how it ended: with an exit code to stop with, or as a crash
        worth a restart (code None)."""
        env = dict(os.environ, **{DIR_ENV: str(folder), RESTART_ENV: str(restart), MAX_ENV: str(self.max_restarts)})
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace") \
            if self.filter_launcher else {}
        proc = subprocess.Popen(self.command, env=env, start_new_session=True, preexec_fn=_launcher_signals, **pipes)
        filt = LauncherFilter()
        relays = [filt.relay(proc.stdout, sys.stdout), filt.relay(proc.stderr, sys.stderr)] \
            if self.filter_launcher else []
        failed_at, stalled, self.told, started = None, [], set(), False
        finished_at, self.hung = None, []
        while proc.poll() is None:
            time.sleep(0.1)
            records = _read(folder)
            started = started or bool(records) or bool(_children(proc.pid))
            self._pass_signals(proc, records)
            if self.stopped_by == signal.SIGUSR1:  # ignored while starting: heard once training has begun
                for r in records:
                    if r.get("code") is None and r.get("phase") == "training" and r["pid"] not in self.told:
                        self.told.add(r["pid"])
                        _signal(r["pid"], self.stopped_by)
            # a process that has ended, other than by finishing (one that caught an error goes on)
            failed = any(r.get("code") not in (0, None) or (r.get("code") is None and not r.get("ended"))
                         for r in records if not alive(r["pid"]))
            if failed and failed_at is None:
                failed_at = time.monotonic()
                # a process that timed out waiting for the others: those still alive and silent stalled
                if any("timed out" in str(r.get("reason", "")).lower() for r in records):
                    stalled = [r["rank"] for r in records if r.get("code") is None and alive(r["pid"])]
            if failed_at is not None and time.monotonic() - failed_at > self.grace:
                _kill(set(_tree(proc.pid)) | {r["pid"] for r in records})
            # every process finished training and one has exited: one that lingers for minutes is hung in
            # its teardown (stopped, a stuck file system) and would hold the job forever
            if finished_at is None and records and all(r.get("code") == 0 for r in records) \
                    and any(not alive(r["pid"]) for r in records):
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() - finished_at > FINISHED_GRACE_S:
                self.hung = self.hung or [r["rank"] for r in records if alive(r["pid"])]
                _kill(set(_tree(proc.pid)) | {r["pid"] for r in records})
        for relay in relays:
            relay.join(timeout=10)
        records = _read(folder)
        _kill(r["pid"] for r in records if alive(r["pid"]) and r["pid"] != os.getpid())  # stopped leftovers
        exit_codes = dict(filt.exit_codes) if self.filter_launcher else {}
        for pid, local_rank in filt.local_ranks.items():  # killed before it could say who it was
            if not any(r["pid"] == pid for r in records) and exit_codes.get(pid, 0) < 0:
                records.append({"rank": local_rank, "name": f"local rank {local_rank}", "pid": pid, "code": None,
                                "phase": "start-up"})
        return self._ending(proc.returncode, records, started, exit_codes, stalled, filt, restart)

    def _ending(self, returncode: int, records: list[dict], started: bool, exit_codes: dict, stalled: list,
                filt: LauncherFilter, restart: int = 0) -> "Ending":
        """The rules, in order: the launcher's success; an end on purpose; a stop signal; a launcher
        that failed before any process started; a script that exited by itself; else a crash."""
        if returncode == 0:
            return Ending(0, "finished (exit 0)", records)
        if records and all(r.get("code") == 0 for r in records):  # the outputs are written: nothing to redo
            how = (f"rank(s) {', '.join(map(str, self.hung))} still there {FINISHED_GRACE_S:.0f} s after training "
                   f"finished, ended" if self.hung else f"the launcher exited {returncode} after training finished")
            return Ending(0, f"finished (exit 0; {how})", records)
        deliberate = [r["code"] for r in records if r.get("final") and r.get("code")]
        if deliberate:
            code = 130 if 130 in deliberate else deliberate[0]
            meaning = f" ({MEANINGS[code]})" if code in MEANINGS else ""
            return Ending(code, f"exit {code}{meaning}: the job ended on purpose; not restarting", records)
        if self.stopped_by:  # stopped before any process could save: not a crash to repeat
            name = signal.Signals(self.stopped_by).name
            return Ending(128 + self.stopped_by, f"stopped by {name}; exit {128 + self.stopped_by}", records)
        if not records and not started and restart == 0:  # the launcher's own failure: its lines are all there is
            if filt.held:
                sys.stderr.write("".join(filt.held))
            return Ending(returncode or 1, f"the launcher failed before any training process started (exit "
                                           f"{returncode}); not restarting", records)
        ended = [r for r in records if r.get("ended")]
        by_itself = [r for r in ended if r.get("exit_code") or exit_codes.get(r["pid"], 0) > 0]
        if by_itself or (ended and all(r.get("ended") or r.get("code") == 0 for r in records)):
            # a process that ended by itself without a crash (its own sys.exit): the others' ends are echoes
            r = (by_itself or ended)[0]
            code = r.get("exit_code") or exit_codes.get(r["pid"]) or returncode or 1
            known = "" if r.get("exit_code") or r["pid"] in exit_codes else " (as the launcher reports it)"
            return Ending(code, f"rank {r['rank']} exited with {code}{known} by itself, not a crash; not restarting",
                          records)
        ending = Ending(None, what_happened(records, exit_codes, stalled, returncode), records)
        ending.failure = failures(records, exit_codes, returncode)
        return ending

    def _pass_signals(self, proc, records) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            # their handlers are in place
            listening = [r["pid"] for r in records if r.get("code") is None and r.get("phase") == "training"]
            for pid in listening or _children(proc.pid) or [proc.pid]:
                _signal(pid, signum)
            self.told.update(listening)  # the others hear it again once they listen


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _launcher_signals() -> None:
    """In the launcher, before it starts: ignore USR1 (SLURM sends it to every process of a step;
    the training processes install their own handler) and get SIGTERM should the supervisor die."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    die_with_parent(signal.SIGTERM)


def _read(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("rank-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("rank", 0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="train/supervisor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-restarts", type=int, default=int(os.environ.get("MAX_RESTARTS", 3)),
                        help="restarts after crashes before giving up (default: $MAX_RESTARTS or 3)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the other processes get to end after one failed (default 10)")
    parser.add_argument("--filter-launcher", action="store_true",
                        help="hold back the launcher's own traceback and log lines")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise")
    supervisor = Supervisor(command, args.max_restarts, args.grace, args.filter_launcher)
    stop_with_parent(supervisor)
    return supervisor.run()


def stop_with_parent(supervisor) -> None:
    """Started by a program that wants its runs to stop when it dies (a search, for its trials:
    TRAIN_STOP_WITH_PARENT=its pid): the parent's death is a SIGTERM, so the run saves a checkpoint
    and stops, and the next search continues it."""
    parent = os.environ.pop("TRAIN_STOP_WITH_PARENT", "")
    if not parent or parent != str(os.getppid()):
        return  # not started by it (a wrapper's own shell in between keeps the variable unused)
    die_with_parent(signal.SIGTERM)
    if str(os.getppid()) != parent:  # it died before the kernel was told
        supervisor.signals.append(signal.SIGTERM)
        supervisor.stopped_by = signal.SIGTERM
