"""The warm template of a supervised job's training processes (`train.supervision.standby`).

    python -u template.py SCRIPT ARGS...

Started once per job by the supervisor, with the training processes' common environment (theirs
less what names a rank and the supervisor's own variables) and working folder: it imports the
modules named on its first line of input (torch, accelerate, the project, ...; never the user's
own modules, whose import-time code runs where it always ran; and it runs no tensor operation),
checks that it is still safe to fork (no Python thread started, CUDA not initialised: else it
says so and exits 3, and restarts start cold), says it is ready (a file `ready` beside its
socket) and then serves each warm restart, one at a time: a standby launcher connects to its
socket and sends the path of the attempt's order (each process's environment, working folder,
arguments) with its own standard output and error; the template forks one process for each, says
their pids, then each one's exit code as it ends (an attempt whose launcher is gone is over: what
remains of it is killed). It stays pristine: the forks train, never the template. Stop signals are
not for it (ignored: the launcher passes them to the processes); it dies with the supervisor
(SIGKILL), and its forks then get SIGTERM, save and end.

A forked process becomes its rank: a fresh interpreter's signal dispositions and SIGTERM should
the template die, its environment, working folder, output streams, its name (`train-rank-N` in
/proc/PID/comm, as `ps -e` and `top` show it: its command line and /proc/PID/environ stay the
template's), a fresh numpy seed (a fresh process would have drawn one); then it runs SCRIPT as
`python -u SCRIPT ARGS` would, and exits as that would (the interpreter's own exit: atexit
handlers, flushed streams). Native thread pools started at import (numpy's BLAS) end themselves
at a fork (their fork handlers); OpenMP and torch's pools start at first use, in the fork (pytorch
issue 41197 is a fork after OpenMP threads ran). Only the standard library is imported before
the preload.
"""

import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys

def preload(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # one that cannot be imported on its own: the script imports what it needs
            pass


def serve(listener: socket.socket) -> dict:
    """Fork each attempt's processes as asked, forever; returns only in a forked process, with what
    it is to become."""
    parent = os.getpid()
    while True:
        conn, _ = listener.accept()
        try:
            conn.send(b"listening")  # only now does the launcher hand over its streams
            message, fds, _, _ = socket.recv_fds(conn, 4096, 2)
            with open(json.loads(message)["order"]) as f:  # a file: an environment may be large
                ranks = json.load(f)["ranks"]
        except (OSError, ValueError, KeyError):
            conn.close()
            continue
        running = {}
        try:
            for rank in ranks:
                pid = os.fork()
                if pid == 0:
                    die_with_parent(parent)
                    listener.close()
                    conn.close()
                    return {**rank, "fds": fds}
                running[pid] = rank
        except OSError:  # no more processes or memory: none of them runs (the supervisor starts them cold)
            for pid in running:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            running = {}
        for fd in fds:
            os.close(fd)
        if running:
            tell(conn, {"pids": {pid: rank["local_rank"] for pid, rank in running.items()}})
            watch(conn, running)
        conn.close()


def die_with_parent(parent: int) -> None:
    """A fork's first act: SIGTERM should the template die (the supervisor died: the process saves
    and ends, as under the launcher), and the dispositions a fresh interpreter has."""
    import ctypes

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the kernel was told
        os._exit(128 + signal.SIGTERM)


def watch(conn: socket.socket, running: dict) -> None:
    """Say each process's exit code as it ends; once the launcher is gone, kill what remains."""
    listening = [conn]
    while running:
        for pid in list(running):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped elsewhere: how it ended is unknown (not a success)
                done, code = pid, -signal.SIGKILL
            if done:
                del running[pid]
                tell(conn, {"pid": pid, "code": code})
        if running and select.select(listening, [], [], 0.02)[0]:
            try:
                more = conn.recv(64)
            except OSError:
                more = b""
            if not more:  # the attempt's launcher is gone, and the attempt with it
                listening = []
                for pid in running:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        elif running and not listening:
            select.select([], [], [], 0.02)


def tell(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass  # its launcher is gone


def become(order: dict) -> None:
    """This forked process takes its rank's place and runs the script."""
    stdout, stderr = order["fds"]
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((devnull, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(order["env"])
    os.chdir(order["cwd"])
    from train.base import forked

    forked.name_this_process(f"train-rank-{order['rank']}")
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    forked.from_template = True  # it may fork its helpers (history.png's) rather than start fresh interpreters
    from train.supervision.reports import watch_process

    watch_process()  # under a supervisor: records this process
    script = os.path.abspath(order["argv"][0])
    sys.argv = list(order["argv"])
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    # a stop signal is for the training processes (the launcher passes it on): the template stays
    # until the supervisor ends it (or dies: SIGKILL, set by the supervisor)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project
    setup = json.loads(sys.stdin.readline())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(setup["socket"])
    listener.listen(4)
    preload(setup["modules"])
    from train.base.forked import unsafe_to_fork

    unsafe = unsafe_to_fork()
    if unsafe:
        print(f"supervisor: no warm restarts: {unsafe} by an import in the template; a restart starts cold", file=sys.stderr,
              flush=True)
        sys.exit(3)  # train.supervision.standby.UNSAFE_TO_FORK
    open(os.path.join(os.path.dirname(setup["socket"]), "ready"), "w").close()
    become(serve(listener))
