# Sourced by the launch wrappers: the project folder, the training script and the supervisor.
#
# The script is train/main.py unless the first argument is a .py file (a script of your own, e.g.
# `launch/cpu2.sh my_script.py --my-flag`); the other arguments go to the script. Every wrapper runs
# its launcher under train/supervisor.py, which restarts the job from its latest checkpoint after a
# crash (MAX_RESTARTS times, default 3; 0 turns restarts off), passes Ctrl-C, SIGTERM and SIGUSR1
# on to the training processes, and exits with their exit code (0, 2, 3, 74, 75, 130; 1 after a
# crash it could not recover from).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
script="$root/train/main.py"
if [[ ${1:-} == *.py ]]; then
    script=$1
    shift
    [[ -f $script ]] || { echo "launch: no such script: $script" >&2; exit 2; }
fi
PYTHON=${PYTHON:-python}
# cuBLAS reads this once, when a process makes its first handle; deterministic runs (the default,
# train/distributed/determinism.py) need it, and here it is set before any process starts
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
command -v accelerate >/dev/null || { echo "launch: accelerate is not on PATH; activate the environment (.venv)" >&2; exit 2; }

# supervise [--filter-launcher] -- COMMAND...: run COMMAND under the supervisor (replaces this shell)
supervise() { exec "$PYTHON" "$root/train/supervisor.py" --max-restarts "${MAX_RESTARTS:-3}" "$@"; }
