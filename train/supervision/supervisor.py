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

What a failure costs is kept small (`train.supervision.progress` measures it; at the end of a job
that survived failures one line says failures, seconds lost per failure and goodput, and
`failures.json` beside the history holds them with each restart's phases):
- a process that died without a word (a signal) is seen within 0.1 s; the others, which would only
  echo it, are ended as soon as the launcher has said how it died. One that raised gets `--grace`
  seconds to end by itself; then the whole process tree is killed;
- a process stopped (SIGSTOP) for `--stall-after` s is a stall, seen without waiting for the
  collective timeout: it is named with where it stopped making progress, and every live process's
  Python stacks go to `<output_dir>/stacks/attempt-N.txt` (`train.supervision.stalls`);
- no pause before a restart: the old processes are gone and each attempt has its own port;
- a restart is warm: its processes are forked from a template that imported torch, accelerate and
  the project once for the job (`train.supervision.standby`), on one node; `--cold` restarts with
  the launcher command. SIGINT, SIGTERM and SIGUSR1 reaching the
supervisor are passed to the training processes (the launcher runs in a session of its own and
ignores USR1, so it neither sees a terminal's Ctrl-C nor dies of SLURM's USR1). A stop signal that
arrives before a process has started training is sent to it again once it has (until then it
may ignore USR1); no restart follows a stop signal. SIGHUP counts as SIGTERM. Should the
supervisor itself die, the launcher gets SIGTERM (the kernel's parent-death signal), and the warm
template SIGKILL, whose forked processes then get SIGTERM.

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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from train.base.errors import DELIBERATE_MEANINGS
from train.base.paths import CHECKPOINTS, memory_checkpoints
from train.base.text import wrapped
from train.supervision.launcher_filter import LauncherFilter  # noqa: E402
from train.supervision.attempts import Ending, failures, resumes_from, what_happened, repeated  # noqa: E402,F401
from train.supervision.reports import DIR_ENV, MAX_ENV, RESTART_ENV, alive, die_with_parent  # noqa: E402
from train.supervision import progress, stalls
from train.supervision.processes import children, gone, kill, send, tree
from train.supervision.standby import Standby, WarmRestarts, as_launcher, read_exits, read_forked, read_starts, spans_nodes, usable

# a process may take this long to exit after training finished (a tracker's upload); the tests shorten it
FINISHED_GRACE_S = float(os.environ.get("TRAIN_FINISHED_GRACE_S", 300))
MEANINGS = DELIBERATE_MEANINGS  # what a deliberate end's exit code means (declared on the error classes)


class Supervisor:
    def __init__(self, command, max_restarts: int, grace: float, filter_launcher: bool, say=None,
                 stall_after: float = 10.0, warm: bool = True):
        self.command, self.max_restarts, self.grace = command, max_restarts, grace
        self.filter_launcher = filter_launcher
        self.say = say or (lambda text: print(wrapped(f"supervisor: {text}"), file=sys.stderr, flush=True))
        self.signals: list[int] = []  # received, not yet passed on
        self.stopped_by = 0  # the first stop signal received
        self.told: set[int] = set()  # processes that were sent a stop signal in this attempt
        self.hung: list[int] = []  # ranks ended because they lingered after training finished
        self.stall_after = stall_after
        self.attempts: list[progress.Attempt] = []
        self.starts: dict[int, dict] = {}  # rank -> what started it (`rank-N.start`), for a warm restart
        self.warm = WarmRestarts(warm, self.say)  # the job's template and the next restart's standby

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        self.stopped_by = self.stopped_by or signum

    def _on_hangup(self, signum, frame):
        self._on_signal(signal.SIGTERM, frame)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.warm.close()

    def _run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        restart, previous_failure, output_dirs = 0, None, []
        started, whys, stack_files = time.time(), [], []
        while True:
            self.attempts.append(progress.Attempt(restart))
            standby = self.warm.take(restart)
            ending = self._warm_attempt(standby, restart, output_dirs) if standby else None
            if ending is None:
                folder = Path(tempfile.mkdtemp(prefix="train-supervisor-"))
                try:
                    ending = self._attempt(folder, restart, output_dirs)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            # an attempt that died starting up never said where it writes: the earlier ones did
            output_dirs = [r["output_dir"] for r in ending.records if r.get("output_dir")] or output_dirs
            if ending.code is not None:
                for out in output_dirs:  # the job is over: its memory checkpoints serve nobody
                    shutil.rmtree(memory_checkpoints(Path(out) / CHECKPOINTS), ignore_errors=True)
                self.say(ending.why)
                if ending.code == 0 and restart:
                    self.say(progress.report(progress.summary(self.attempts, started, time.time(), whys,
                                                              stack_files), output_dirs))
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
            whys.append(ending.why)
            stack_files.append(ending.stacks)
            stacked = f"; the stacks of its processes in {ending.stacks}" if ending.stacks else ""
            self.say(f"{ending.why}{stacked}; restarting{resumes_from(output_dirs, spans_nodes(self.starts))} (restart {restart} of "
                     f"{self.max_restarts})")
            # no pause: this attempt's processes are gone (`_attempt` waited), and the next attempt's
            # rendezvous is its own (a port per attempt), so other nodes' leftovers cannot meet it
            if self.stopped_by:  # asked to stop while waiting: do not start again
                self.say(f"stopped by {signal.Signals(self.stopped_by).name} between attempts; exit "
                         f"{128 + self.stopped_by}")
                return 128 + self.stopped_by

    def _attempt(self, folder: Path, restart: int, output_dirs: list[str] = (), warm: Standby | None = None) -> "Ending":
        """Run the command once and say how it ended: with an exit code to stop with, or as a crash
        worth a restart (code None)."""
        env = dict(os.environ, **{DIR_ENV: str(folder), RESTART_ENV: str(restart), MAX_ENV: str(self.max_restarts)})
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace") \
            if self.filter_launcher else {}
        proc = warm.start() if warm else subprocess.Popen(self.command, env=env, start_new_session=True,
                                                          preexec_fn=as_launcher, **pipes)
        filt = LauncherFilter()
        relays = [filt.relay(proc.stdout, sys.stdout), filt.relay(proc.stderr, sys.stderr)] \
            if self.filter_launcher else []
        failed_at, stalled, self.told, started = None, [], set(), False
        finished_at, self.hung, stall_words, stack_file, first = None, [], {}, None, set()
        stopped_watch = stalls.StoppedWatch(self.stall_after)
        attempt = self.attempts[-1] if self.attempts else progress.Attempt(restart)
        attempt.warm = warm is not None
        while proc.poll() is None:
            time.sleep(0.1)
            records = _read(folder)
            started = started or bool(records) or bool(children(proc.pid))
            attempt.look(folder, len(records))
            self.starts = read_starts(folder, records, self.starts)
            if self.warm.wanted() and failed_at is None and restart < self.max_restarts and records and \
                    all(self.starts.get(r["rank"], {}).get("pid") == r["pid"] for r in records) and not usable(self.starts):
                self.warm.prepare(self.starts, restart + 1, self.max_restarts, pipes)
            mine = {rank: start for rank, start in self.starts.items() if any(r["pid"] == start["pid"] for r in records)}
            attempt.timing(records, mine if len(mine) == len(records) else {})
            self._pass_signals(proc, records)
            if self.stopped_by == signal.SIGUSR1:  # ignored while starting: heard once training has begun
                for r in records:
                    if r.get("code") is None and r.get("phase") == "training" and r["pid"] not in self.told:
                        self.told.add(r["pid"])
                        send(r["pid"], self.stopped_by)
            # a process that has ended, other than by finishing (one that caught an error goes on)
            dead = [r for r in records if not alive(r["pid"])]
            failed = any(r.get("code") not in (0, None) or (r.get("code") is None and not r.get("ended")) for r in dead)
            # forked by the template and ended before its record (killed as it started): its launcher says so
            codes = read_exits(folder)[0] if warm is not None else {}
            unrecorded = {pid for pid, code in codes.items() if code != 0 and not any(r["pid"] == pid for r in records)}
            everyone = processes(folder, records, warm)
            failed = failed or bool(unrecorded)
            stopped = stopped_watch.stalled(records)
            timed_out = failed and any("timed out" in str(r.get("reason", "")).lower() for r in records)
            if failed_at is None and (stopped or timed_out):
                # the stalled: the stopped, or those still alive and silent when another timed out
                culprits = stopped or [r for r in records if r.get("code") is None and alive(r["pid"])]
                stalled = [r["rank"] for r in culprits]
                attempt.failed_at = time.time()
                stall_words = {r["rank"]: stalls.words(r, attempt.idle(r["rank"], time.time()), r in stopped)
                               for r in culprits}
                stack_file = stalls.collect(records, folder, next(iter(output_dirs), None) or next(
                    (r["output_dir"] for r in records if r.get("output_dir")), None), restart + 1, stall_words)
                kill(r["pid"] for r in records if alive(r["pid"]))
                failed = True
            if failed and failed_at is None:
                failed_at = time.monotonic()
                attempt.failed_at = attempt.failed_at or time.time()
                first = {r["pid"] for r in dead if r.get("code") is None and not r.get("ended")} | unrecorded
            # one died without a word (a signal): the others' ends would only echo it. They are ended
            # once the launcher has said how it died (torchrun logs it within its monitor interval)
            if first and failed_at is not None and any(alive(pid) for pid in everyone) and (
                    time.monotonic() - failed_at > 1.5 or first & (set(filt.exit_codes) | set(codes))):
                kill(pid for pid in everyone if alive(pid))
            if failed_at is not None and time.monotonic() - failed_at > self.grace:
                kill(set(tree(proc.pid)) | everyone)
            # every process finished training and one has exited: one that lingers for minutes is hung in
            # its teardown (stopped, a stuck file system) and would hold the job forever
            if finished_at is None and records and all(r.get("code") == 0 for r in records) \
                    and any(not alive(r["pid"]) for r in records):
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() - finished_at > FINISHED_GRACE_S:
                self.hung = self.hung or [r["rank"] for r in records if alive(r["pid"])]
                kill(set(tree(proc.pid)) | everyone)
        for relay in relays:
            relay.join(timeout=10)
        records = _read(folder)
        attempt.look(folder, len(records))
        everyone = processes(folder, records, warm)
        kill(pid for pid in everyone if alive(pid) and pid != os.getpid())  # stopped leftovers
        gone([pid for pid in everyone if pid != os.getpid()])
        attempt.gone_at = time.time()
        exit_codes = dict(filt.exit_codes) if self.filter_launcher else {}
        if warm is not None:  # the standby reports its processes' exit codes itself
            codes, local_ranks = read_exits(folder)
            exit_codes.update(codes)
            filt.local_ranks.update(local_ranks)
        for pid, local_rank in filt.local_ranks.items():  # killed before it could say who it was
            if not any(r["pid"] == pid for r in records) and exit_codes.get(pid, 0) < 0:
                records.append({"rank": local_rank, "name": f"local rank {local_rank}", "pid": pid, "code": None,
                                "phase": "start-up"})
        ending = self._ending(proc.returncode, records, started, exit_codes, stalled, filt, restart,
                              dict(stall_words=stall_words, first=first, beats=attempt.last))
        ending.stacks = stack_file
        return ending

    def _ending(self, returncode: int, records: list[dict], started: bool, exit_codes: dict, stalled: list,
                filt: LauncherFilter, restart: int = 0, seen: dict | None = None) -> "Ending":
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
        ending = Ending(None, what_happened(records, exit_codes, stalled, returncode, **(seen or {})), records)
        ending.failure = failures(records, exit_codes, returncode)
        return ending

    def _warm_attempt(self, standby: Standby, restart: int, output_dirs: list[str]) -> "Ending | None":
        """The attempt with its processes forked by the template; None when it could not fork them
        (said: the launcher command then starts them)."""
        try:
            ending = self._attempt(standby.folder, restart, output_dirs, standby)
        finally:
            forked = self.warm.finish(standby)
        return ending if forked else None

    def _pass_signals(self, proc, records) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            # their handlers are in place
            listening = [r["pid"] for r in records if r.get("code") is None and r.get("phase") == "training"]
            for pid in listening or children(proc.pid) or [proc.pid]:
                send(pid, signum)
            self.told.update(listening)  # the others hear it again once they listen


def processes(folder: Path, records: list[dict], warm: Standby | None) -> set[int]:
    """The attempt's training processes: those that wrote a record, and those the template forked
    (one killed as it started may have none)."""
    return {r["pid"] for r in records} | (read_forked(folder) if warm is not None else set())


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
    parser.add_argument("--stall-after", type=float, default=float(os.environ.get("STALL_AFTER_S", 10)),
                        help="seconds a training process may stay stopped (SIGSTOP) before the job counts as "
                             "stalled, its stacks are kept and it is restarted (default: $STALL_AFTER_S or 10)")
    parser.add_argument("--cold", action="store_true", default=os.environ.get("WARM_RESTARTS") == "0",
                        help="restart with the launcher command, without a warm standby (or WARM_RESTARTS=0)")
    parser.add_argument("--filter-launcher", action="store_true",
                        help="hold back the launcher's own traceback and log lines")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise")
    supervisor = Supervisor(command, args.max_restarts, args.grace, args.filter_launcher,
                            stall_after=args.stall_after, warm=not args.cold)
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
