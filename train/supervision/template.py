"""The warm template of a supervised job's training processes (`train.supervision.standby`).

    python -u template.py SCRIPT ARGS...

Started once per job by the supervisor, with the training processes' common environment (theirs
less what names a rank and the supervisor's own variables) and working folder: it imports the
modules named on its first line of input (torch, accelerate, the project, ...; never the user's
own modules, whose import-time code runs where it always ran; and it runs no tensor operation),
says it is ready (a file `ready` beside its socket) and then serves each warm restart: a standby
launcher connects to its socket and sends the attempt's processes (each one's environment, working
folder, arguments) with its own standard output and error; the template forks one process for
each, says their pids, and then each one's exit code as it ends (an attempt whose launcher is gone
is over: what remains of it is killed). It stays pristine: the forks train, never the template.

A forked process becomes its rank: its environment, working folder, output streams, its name
(`train-rank-N`, as `ps` shows it: /proc/PID/environ keeps the template's environment, which names
no rank), a fresh numpy seed (a fresh process would have drawn one); then it runs SCRIPT as
`python -u SCRIPT ARGS` would, and exits as that would (the interpreter's own exit: atexit
handlers, flushed streams). Forking is safe here: the template has started no thread of its own,
and its libraries start theirs (OpenMP, torch's pools) at their first use, in the fork; numpy's
BLAS pool, started at import, is shut down by its own fork handler (pytorch issue 41197 is a fork
after OpenMP threads ran). Only the standard library is imported before the preload.
"""

import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys

MAX_ORDER = 1 << 22  # bytes: an attempt's processes with their environments


def preload(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # one that cannot be imported on its own: the script imports what it needs
            pass


def serve(listener: socket.socket) -> dict:
    """Fork each attempt's processes as asked, forever; returns only in a forked process, with what
    it is to become."""
    while True:
        conn, _ = listener.accept()
        try:
            order, fds, _, _ = socket.recv_fds(conn, MAX_ORDER, 2)
            ranks = json.loads(order)["ranks"] if order else []
        except (OSError, ValueError, KeyError):
            conn.close()
            continue
        running = {}
        for rank in ranks:
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                return {**rank, "fds": fds}
            running[pid] = rank
        for fd in fds:
            os.close(fd)
        tell(conn, {"pids": {pid: rank["local_rank"] for pid, rank in running.items()}})
        watch(conn, running)
        conn.close()


def watch(conn: socket.socket, running: dict) -> None:
    """Say each process's exit code as it ends; once the launcher is gone, kill what remains."""
    listening = [conn]
    while running:
        for pid in list(running):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del running[pid]
                tell(conn, {"pid": pid, "code": os.waitstatus_to_exitcode(status)})
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
    name = f"train-rank-{order['rank']}"[:15].encode()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    from train.supervision.reports import watch_process

    watch_process()  # under a supervisor: records this process, ended with the template
    script = os.path.abspath(order["argv"][0])
    sys.argv = list(order["argv"])
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project
    setup = json.loads(sys.stdin.readline())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(setup["socket"])
    listener.listen(4)
    preload(setup["modules"])
    open(os.path.join(os.path.dirname(setup["socket"]), "ready"), "w").close()
    become(serve(listener))
