"""Supervise a training job: restart it after a crash, keep its exit codes and its output honest.

    python train/supervisor.py [--max-restarts N] [--grace S] [--filter-launcher] -- COMMAND ...

COMMAND is a launcher (`accelerate launch ...`) or a script. Each training process reports to the
supervisor through small files (`record_start` / `record_exit`, called by `train.Run`): its pid, its
output folder, and how it ended. When the job ends, the supervisor decides:

- every process finished and the launcher exited 0: exit 0;
- a process ended on purpose (it raised one of `train.errors`' run errors: bad input 2, NaN 3,
  disk full 74, preempted 75, Ctrl-C 130, a failed preflight 1; its record says `final`): exit
  with that code, no restart (the process has said why in one line);
- anything else is a crash (a process killed by a signal or the OOM killer, a bug, a lost peer,
  a stalled peer whose collective timed out): one line naming it, then the same command again,
  which resumes from the latest checkpoint, up to N times (`restart 1 of 3`); then exit 1.

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
launcher's own lines are held back (`train.launcher_filter`; shown only when no training process
ever started) while the training processes' output passes through. Only the standard library is
imported: the supervisor starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the project folder first, for `train.launcher_filter`
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.launcher_filter import LauncherFilter  # noqa: E402

DIR_ENV, RESTART_ENV, MAX_ENV = "TRAIN_SUPERVISOR_DIR", "TRAIN_RESTART", "TRAIN_MAX_RESTARTS"


# ------------------------------------------------------------------------ the processes' side
def _record(**fields) -> None:
    folder = os.environ.get(DIR_ENV)
    if not folder:
        return
    rank = int(os.environ.get("RANK", "0"))
    path = Path(folder) / f"rank-{rank}.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**old, "rank": rank, "pid": os.getpid(), **fields}))
        os.replace(tmp, path)
    except OSError:
        pass  # the supervisor's folder is gone: it is not watching any more


def record_start(output_dir) -> None:
    """This process started training into `output_dir` (a no-op without a supervisor)."""
    _record(host=socket.gethostname(), output_dir=str(output_dir), code=None)


def record_exit(code: int, reason: str, final: bool = False, **where) -> None:
    """This process is ending with exit `code` because of `reason`, at `where` (epoch, batch, ...).
    `final`: it ends on purpose (a bad input, a NaN, a stop signal): no restart would help."""
    _record(code=code, reason=reason, final=final, **where)


# ------------------------------------------------------------------------ the supervisor's side
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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
        self.say = say or (lambda text: print(textwrap.fill(f"supervisor: {text}", 100, subsequent_indent="    ",
                                                            break_long_words=False), file=sys.stderr, flush=True))
        self.signals: list[int] = []  # received, not yet passed on
        self.stopped_by = 0  # the first stop signal received
        self.told: set[int] = set()  # processes that were sent a stop signal in this attempt

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        self.stopped_by = self.stopped_by or signum

    def _on_hangup(self, signum, frame):
        self._on_signal(signal.SIGTERM, frame)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        restart = 0
        while True:
            with tempfile.TemporaryDirectory(prefix="train-supervisor-") as folder:
                code, records, why = self._attempt(Path(folder), restart)
            if code is not None:
                return code
            if restart >= self.max_restarts:
                self.say(f"{why}; no restarts left (max_restarts={self.max_restarts}), giving up")
                return 1
            restart += 1
            self.say(f"{why}; restarting{_from_latest(records)} (restart {restart} of {self.max_restarts})")
            time.sleep(2)  # let the other nodes' processes end and free their ports
            if self.stopped_by:  # asked to stop while waiting: do not start again
                return 128 + self.stopped_by

    def _attempt(self, folder: Path, restart: int):
        """Run the command once; returns (exit code, records, None) to stop with that code, or
        (None, records, what happened) for a crash worth a restart."""
        env = dict(os.environ, **{DIR_ENV: str(folder), RESTART_ENV: str(restart), MAX_ENV: str(self.max_restarts)})
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace") \
            if self.filter_launcher else {}
        proc = subprocess.Popen(self.command, env=env, start_new_session=True, preexec_fn=_launcher_signals, **pipes)
        filt = LauncherFilter()
        relays = [filt.relay(proc.stdout, sys.stdout), filt.relay(proc.stderr, sys.stderr)] \
            if self.filter_launcher else []
        failed_at, stalled, self.told, started = None, [], set(), False
        while proc.poll() is None:
            time.sleep(0.1)
            records = _read(folder)
            started = started or bool(records) or bool(_children(proc.pid))
            self._pass_signals(proc, records)
            if self.stopped_by:  # processes that started training after the signal hear it now (once)
                for r in records:
                    if r.get("code") is None and r["pid"] not in self.told:
                        self.told.add(r["pid"])
                        _signal(r["pid"], self.stopped_by)
            # a process that has ended, other than by finishing (one that caught an error goes on)
            failed = any(r.get("code") != 0 and not _alive(r["pid"]) for r in records)
            if failed and failed_at is None:
                failed_at = time.monotonic()
                # a process that timed out waiting for the others: those still alive and silent stalled
                if any("timed out" in str(r.get("reason", "")).lower() for r in records):
                    stalled = [r["rank"] for r in records if r.get("code") is None and _alive(r["pid"])]
            if failed_at is not None and time.monotonic() - failed_at > self.grace:
                _kill(set(_tree(proc.pid)) | {r["pid"] for r in records})
        for relay in relays:
            relay.join(timeout=10)
        records = _read(folder)
        _kill(r["pid"] for r in records if _alive(r["pid"]) and r["pid"] != os.getpid())  # stopped leftovers
        codes = [r.get("code") for r in records]
        if records and all(c == 0 for c in codes) and proc.returncode == 0:
            return 0, records, None
        deliberate = [r["code"] for r in records if r.get("final") and r.get("code")]
        if deliberate:
            return (130 if 130 in deliberate else deliberate[0]), records, None
        if self.stopped_by:  # stopped before any process could save: not a crash to repeat
            return 128 + self.stopped_by, records, None
        if not records:  # nothing started training: the launcher or the script failed first
            if filt.held and not started:  # the launcher's own failure: its lines are all there is
                sys.stderr.write("".join(filt.held))
            return proc.returncode or 1, records, None
        exit_codes = dict(filt.exit_codes) if self.filter_launcher else {}
        if not self.filter_launcher and proc.returncode is not None:
            exit_codes[proc.pid] = proc.returncode
        return None, records, _what_happened(records, exit_codes, stalled)

    def _pass_signals(self, proc, records) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            listening = [r["pid"] for r in records if r.get("code") is None]  # their handlers are in place
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
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _read(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("rank-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("rank", 0))


def _what_happened(records: list[dict], exit_codes: dict[int, int], stalled: list[int]) -> str:
    """One phrase: which process failed how, and where the job was."""
    failures = [r for r in records if r.get("code") not in (None, 0)]
    # the cause before its echoes: a process that lost contact only heard of another's failure
    failed = next((r for r in failures if not str(r.get("reason", "")).startswith("lost contact")),
                  failures[0] if failures else None)
    if failed is None and not any(r.get("code") is None for r in records):  # all finished, the launcher did not
        return "a process failed after training finished (the launcher exited non-zero)"
    killed = next((r for r in records if exit_codes.get(r["pid"], 0) < 0), None)
    silent = next((r for r in records if r.get("code") is None), None)
    if stalled:
        culprit = f"rank {stalled[0]} stalled" + (f" (rank {failed['rank']}: {failed['reason']})" if failed else "")
    elif killed:
        culprit = f"rank {killed['rank']} exited ({signal.Signals(-exit_codes[killed['pid']]).name})"
    elif silent:  # ended without a word: a signal it could not handle (SIGKILL, the OOM killer)
        culprit = f"rank {silent['rank']} died without a word (killed by a signal?)"
    else:
        culprit = f"rank {failed['rank']} failed ({failed.get('reason', 'unknown')})"
    where = next((r for r in records if r.get("epoch")), None)
    return culprit + (f" at epoch {where['epoch']} batch {where['batch']}" if where else "")


def _from_latest(records: list[dict]) -> str:
    for r in records:
        pointer = Path(r.get("output_dir") or "") / "checkpoints" / "latest"
        if r.get("output_dir") and pointer.is_file():
            return f" from {pointer.read_text().strip()}"
    return ""


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
    return Supervisor(command, args.max_restarts, args.grace, args.filter_launcher).run()


if __name__ == "__main__":
    sys.exit(main())
