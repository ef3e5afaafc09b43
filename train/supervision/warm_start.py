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

if __name__ == "__main__":
    script = os.path.abspath(sys.argv[1])
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project
    from train.supervision.reports import watch_process

    watch_process()  # under a supervisor: records this process, ended with its launcher
    for name in json.loads(sys.stdin.readline()):
        try:
            importlib.import_module(name)
        except Exception:  # one that cannot be imported on its own: the script imports what it needs
            pass
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
