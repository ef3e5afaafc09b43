"""The training processes' side of the supervisor (`train/supervisor.py`): how each process tells
it that it lives and how it ended, through one small JSON file per rank in the folder the supervisor
names in `TRAIN_SUPERVISOR_DIR`. Without a supervisor every function here does nothing.

A record goes through these states:
- `phase: "start-up"`, `code: null`: written when `train` is imported (`watch_process`), so that a
  process killed while it still loads torch is known to have existed;
- `phase: "training"`: `train.Run` began training into `output_dir` (`record_start`);
- `code: N`: it ended, with `reason`, `kind` ("finished", "deliberate", "exception",
  "lost contact") and where (epoch, batch, step); `final` when it ended on purpose;
- `ended: true`, `code: null`: it exited by itself before training (a script's own `sys.exit`);
- nothing more: it died without a word (a signal it could not handle: SIGKILL, the OOM killer).

Beside the record, while it trains, a process writes:
- `rank-N.beat`: its progress (time, optimizer step, epoch, batch), at most twice a second (`beat`),
  so the supervisor sees which process stopped making progress, and how much progress a failure
  cost before a restart regained it;
- `rank-N.start`, once, with its first beat: what started it (executable, arguments, working
  folder, environment) and the modules it had loaded, from which the supervisor forks a warm
  restart (`train.supervision.standby`);
- `rank-N.stack`: its Python stacks (every thread), written by `faulthandler` when the supervisor
  sends SIGUSR2 before it ends a stalled job.

Only the standard library is imported: this runs at `import train`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

DIR_ENV, RESTART_ENV, MAX_ENV = "TRAIN_SUPERVISOR_DIR", "TRAIN_RESTART", "TRAIN_MAX_RESTARTS"
_LOST_CONTACT_SIGNS = ("connection reset", "connection refused", "broken pipe", "gloo", "nccl", "timed out")

STACK_SIGNAL = signal.SIGUSR2  # the supervisor asks for a process's stacks with it (faulthandler answers)
BEAT_EVERY_S = 0.5

_watching = False
_next_beat = 0.0
_started_written = False
_stack_file = None
_started_env: dict = {}  # the environment as the process was started (before the run sets its own)


def _path() -> Path | None:
    folder = os.environ.get(DIR_ENV)
    return Path(folder) / f"rank-{int(os.environ.get('RANK', '0'))}.json" if folder else None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def state(pid: int) -> str:
    """The kernel's one-letter state of a process (R running, S sleeping, T stopped, Z gone but not
    yet reaped, ...), or "" when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    return state(pid) not in ("", "Z")


def _record(**fields) -> None:
    path = _path()
    if path is None:
        return
    try:
        old = _read(path)
        if old.get("pid") not in (None, os.getpid()) and alive(old["pid"]):
            return  # the record of the training process this one was started by (a helper, a worker)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**old, "rank": int(os.environ.get("RANK", "0")), "pid": os.getpid(), **fields}))
        os.replace(tmp, path)
    except OSError:
        pass  # the supervisor's folder is gone: it is not watching any more


def _mine() -> bool:
    path = _path()
    return path is not None and _read(path).get("pid") == os.getpid()


def is_lost_contact(reason: str) -> bool:
    """Whether an error's text says that another process died or stalled (a collective failed)."""
    return any(sign in reason.lower() for sign in _LOST_CONTACT_SIGNS)


def lost_contact(error: BaseException) -> bool:
    """Whether an exception is a collective that failed because another process died or stalled:
    torch.distributed's own errors, or a RuntimeError whose text says so (gloo's and NCCL's)."""
    kinds = {k.__name__ for k in type(error).__mro__}
    return bool(kinds & {"DistError", "DistNetworkError", "DistBackendError"}) or (
        isinstance(error, RuntimeError) and is_lost_contact(str(error)))


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signum)
    except (OSError, AttributeError):
        pass


def watch_process() -> None:
    """Record that this process lives (at `import train`, under a supervisor only), record an
    uncaught exception or a plain exit as this process's end, and have the kernel send SIGTERM to
    this process should its parent die (its launcher, which gets SIGTERM when the supervisor dies:
    a single-process launcher does not pass it on; or the warm template it was forked from, killed
    when the supervisor dies). Loader workers and helpers leave the record to the process that
    started them."""
    global _watching, _started_env
    path = _path()
    if _watching or path is None:
        return
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return  # a loader worker
    old = _read(path)
    if old.get("pid") not in (None, os.getpid()) and alive(old["pid"]):
        return  # a helper process of the training process (e.g. the plot helper)
    _watching = True
    _started_env = dict(os.environ)
    _record(host=socket.gethostname(), code=None, phase="start-up")
    _answer_stack_requests(path.with_suffix(".stack"))
    die_with_parent()
    from train.base.output import outlive_the_reader  # standard library only, like this module

    outlive_the_reader()  # the supervisor reads this process's output: it may die before this process
    previous = sys.excepthook

    def on_uncaught(kind, error, tb):
        if _mine() and _read(path).get("code") is None:
            from train.base.errors import describe  # standard library only, like this module

            record_exit(1, describe(error), kind="lost contact" if lost_contact(error) else "exception")
        previous(kind, error, tb)

    sys.excepthook = on_uncaught
    exit_as_asked = sys.exit

    def exit_recorded(code=0):  # the launcher (accelerate launch --quiet) reports every failure as 1
        if _mine() and _read(path).get("code") is None:
            _record(exit_code=code if isinstance(code, int) else 1)
        exit_as_asked(code)

    sys.exit = exit_recorded
    import atexit

    atexit.register(_on_exit)


def _answer_stack_requests(path: Path) -> None:
    """Have `faulthandler` write every thread's Python stack to `path` on STACK_SIGNAL: in C, from
    the signal handler, so it answers also while the process waits inside a collective or was
    stopped (the supervisor sends SIGCONT after it)."""
    global _stack_file
    import faulthandler

    try:
        _stack_file = open(path, "w")
        faulthandler.register(STACK_SIGNAL, file=_stack_file, all_threads=True, chain=False)
    except (OSError, ValueError, AttributeError):
        _stack_file = None


def beat(step: int, epoch: int, batch: int) -> None:
    """This process made progress (called after every batch; writes at most every BEAT_EVERY_S).
    The first beat also writes what started this process (`rank-N.start`)."""
    global _next_beat, _started_written
    now = time.monotonic()
    if now < _next_beat:
        return
    _next_beat = now + BEAT_EVERY_S
    path = _path()
    if path is None:
        return
    try:
        tmp = path.with_suffix(f".beat.{os.getpid()}.tmp")
        tmp.write_text(f"{time.time():.3f} {step} {epoch} {batch}")
        os.replace(tmp, path.with_suffix(".beat"))
        if not _started_written:
            _started_written = True
            _write_start(path.with_suffix(".start"))
    except OSError:
        pass


def _write_start(path: Path) -> None:
    """What a warm restart needs to start this process again: the same executable, arguments,
    working folder and environment (as it was when `train` was imported: the run sets a few variables
    of its own on some ranks, e.g. quieter libraries off the main process); and the loaded modules a
    warm template imports in advance."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"first_beat_at": time.time(), "executable": sys.executable, "argv": sys.argv, "cwd": os.getcwd(),
                               "env": _started_env or dict(os.environ), "modules": sorted(m for m in sys.modules if "." not in m)}))
    os.replace(tmp, path)


def read_beat(path: Path) -> tuple[float, int, int, int] | None:
    """(wall time, step, epoch, batch) of a process's last beat, or None."""
    try:
        t, step, epoch, batch = path.read_text().split()
        return float(t), int(step), int(epoch), int(batch)
    except (OSError, ValueError):
        return None


def _on_exit() -> None:
    record_ended()


def record_ended(code: int | None = None) -> None:
    """This process is exiting by itself (with `code`, where known) without having recorded how
    it ended: no signal killed it. Called at exit; `train/main.py` calls it before its fast exit."""
    if _mine() and _read(_path()).get("code") is None:
        _record(ended=True, **({"exit_code": code} if code is not None else {}))


def record_start(output_dir) -> None:
    """This process started training into `output_dir` (a no-op without a supervisor)."""
    _record(host=socket.gethostname(), output_dir=str(output_dir), code=None, phase="training",
            training_at=time.time())


def record_ready() -> None:
    """This process has put its state back (a checkpoint loaded, or none to load) and is about to
    train: the end of a restart's "state loaded" phase."""
    _record(ready_at=time.time())


def supervised() -> bool:
    """Whether a supervisor watches this process."""
    return _path() is not None


def ended_by(error) -> int:
    """The one way a program that owns its process (the script, the commands, `fit(output_dir=...)`)
    ends on a `train.base.errors.RunError`: recorded as a deliberate end (a supervisor must not
    restart it), its one line said (`error: ...`), its exit code returned."""
    from train.base.errors import report

    record_exit(error.exit_code, str(error), final=True)
    report(error)
    return error.exit_code


def record_exit(code: int, reason: str, final: bool = False, kind: str = "", **where) -> None:
    """This process is ending with exit `code` because of `reason`, at `where` (epoch, batch, ...).
    `final`: it ends on purpose (a bad input, a NaN, a stop signal): no restart would help.
    `kind`: "finished", "deliberate", "exception" (a bug, or a fault of this process) or
    "lost contact" (another process failed)."""
    kind = kind or ("finished" if code == 0 else "deliberate" if final else "exception")
    _record(code=code, reason=reason, final=final, kind=kind, **where)
