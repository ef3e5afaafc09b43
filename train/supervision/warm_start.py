"""A training process started in advance for a warm restart (`train.supervision.standby`):
`python -u warm_start.py SCRIPT ARGS...` imports the modules named on its first line of input,
says it is ready, and on "go" runs SCRIPT with ARGS as `python -u SCRIPT ARGS` would (on end of
input it exits quietly: the supervisor did not need it). Only the standard library is imported
here; the modules it preloads are named by the supervisor."""

import importlib
import json
import os
import runpy
import sys
import threading


def preload(names: list[str]) -> None:
    """Import `names` from a thread of the idle scheduling class (Linux's SCHED_IDLE): the standby
    starts while the job trains, and its imports should take only the cycles the training leaves.
    Where the training keeps every core busy (2 CPU ranks on 2 cores, `bench/faults.py`) they still
    slowed the steps about as much at idle priority as at normal; with a spare core they cost the
    training nothing either way. A thread keeps the class it was created in and an unprivileged
    process cannot leave it: numpy, whose import starts a BLAS thread pool, is imported first at
    normal priority, and any thread the other imports started is given back the normal class where
    permitted."""
    try:
        importlib.import_module("numpy")
    except Exception:
        pass

    def imports():
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux: at normal priority
            pass
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # one that cannot be imported on its own: the script imports what it needs
                pass

    before = set(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else set()
    thread = threading.Thread(target=imports, name="preload")
    thread.start()
    thread.join()
    for tid in set(os.listdir("/proc/self/task")) - before if before else ():
        try:
            if os.sched_getscheduler(int(tid)) == os.SCHED_IDLE:
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
        except OSError:  # the importing thread, gone; or not permitted
            pass


if __name__ == "__main__":
    script = os.path.abspath(sys.argv[1])
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project
    from train.supervision.reports import watch_process

    watch_process()  # under a supervisor: records this process, ended with its launcher
    preload(json.loads(sys.stdin.readline()))
    folder = os.environ.get("TRAIN_SUPERVISOR_DIR")
    if folder:
        open(os.path.join(folder, f"ready-{int(os.environ.get('RANK', '0'))}"), "w").close()
    if sys.stdin.readline().strip() != "go":
        from train.supervision.reports import record_ended

        record_ended(0)
        os._exit(0)
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")
