"""A helper process forked from this one, with the handle `subprocess.Popen` would give (pipes
to its input and from its output, `poll`, `wait`, `kill`). A fork starts in a millisecond with
every module this process has imported, where `python -m ...` pays the interpreter and its
imports again: a training process forked from the supervisor's warm template (which imported
matplotlib for it) starts its drawing helper this way, so a restart does not pay a second of CPU
for it on cores the restarting ranks need. The standard library has no such handle
(`multiprocessing` would count the helper among the process's children, which decides how a
script exits), hence this one. Safe only in a process that has started no thread: the caller
checks `unsafe_to_fork()`. Standard library only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, TextIO

# set by the supervisor's warm template in each process it forks (train.supervision.template): a
# process that has imported what its helpers need and run no tensor operation yet
from_template = False


def unsafe_to_fork() -> str:
    """Why forking this process now could hang or break the fork ("" when it is safe): a Python
    thread (its locks would be copied mid-use), or CUDA initialised (a fork cannot use it). Native
    thread pools started at import (numpy's BLAS) end themselves at a fork (their fork handlers)."""
    if threading.active_count() > 1:
        return f"{threading.active_count() - 1} thread(s) started"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA initialised"
    return ""


class Forked:
    """The forked helper's handle: `stdin` (binary, to it), `stdout` (binary, from it), `pid`,
    `returncode`, `poll()`, `wait(timeout)` and `kill()` as `subprocess.Popen` has them."""

    def __init__(self, pid: int, stdin, stdout):
        self.pid, self.stdin, self.stdout, self.returncode = pid, stdin, stdout, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked helper {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:  # reaped now: nobody else would (subprocess reaps only its own)
                self.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass


def fork_helper(serve: Callable[[TextIO, TextIO], None], name: str) -> Forked:
    """Fork a helper that runs `serve(requests, answers)` (text streams on two pipes) and exits;
    in a session of its own (out of the terminal's Ctrl-C, as `start_new_session`), named `name`
    in /proc/PID/comm (else it would carry this process's name), holding no other descriptor of
    this process but its standard error. Raises OSError when it cannot fork."""
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # else the helper's exit could write their buffers twice
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        pid = os.fork()
    except OSError:
        for fd in (requests_r, requests_w, answers_r, answers_w):
            os.close(fd)
        raise
    if pid == 0:  # the helper: never returns
        code = 1
        try:
            os.setsid()
            name_this_process(name)
            os.dup2(requests_r, 0)
            os.dup2(answers_w, 1)
            import faulthandler
            import gc

            gc.freeze()  # this process's file objects are not the helper's to finalise (their numbers are reused)
            faulthandler.disable()
            for signum in range(1, signal.NSIG):  # a stack dump on a signal would write to a closed descriptor
                try:
                    faulthandler.unregister(signum)
                except (ValueError, RuntimeError, OSError):
                    pass
            try:
                fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
            except OSError:  # no /proc
                fds = range(3, os.sysconf("SC_OPEN_MAX"))
            for fd in fds:
                if fd > 2:
                    try:
                        os.close(fd)
                    except OSError:  # the listing's own, or none
                        pass
            sys.stdout = sys.stderr = open(2, "w", buffering=1, closefd=False)
            serve(open(0, closefd=False), open(1, "w", closefd=False))
            code = 0
        except BaseException:  # noqa: BLE001 - said on its stderr; this process's handlers must not run here
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)  # not this process's atexit handlers, nor its streams' buffers
    os.close(requests_r)
    os.close(answers_w)
    return Forked(pid, os.fdopen(requests_w, "wb"), os.fdopen(answers_r, "rb"))


def name_this_process(name: str) -> None:
    """`name` (15 characters at most) in /proc/PID/comm, as `ps -e` and `top` show it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15].encode()), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
