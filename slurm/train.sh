#!/usr/bin/env bash
# Train on SLURM: sbatch slurm/train.sh [key=value ...]      (run from the project folder)
# Your own script instead of train/main.py: sbatch slurm/train.sh path/to/my_script.py [its arguments]
# A search, each array task one of its workers: sbatch --array=0-3 slurm/train.sh --sweep --config C
#     --space S --trials N --dir D [key=value ...]       (see python -m train.sweep --help)
# More nodes or GPUs, another time limit: sbatch --nodes=4 --gpus-per-node=8 --time=24:00:00 slurm/train.sh
# On a cluster without GPUs: sbatch --gpus-per-node=0 slurm/train.sh (gloo processes on the CPUs).
#
#SBATCH --job-name=train
#SBATCH --nodes=1
# one task per node: each runs one `accelerate launch`, which starts one process per GPU of its node
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=04:00:00
# USR1 to this batch shell (B:) 120 s before the time limit: enough to save a checkpoint and requeue
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
# one log per job, in the folder sbatch was called from; appended to across requeues
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

# sbatch runs a copy of this script from its spool folder: find the project from where it was submitted
root=${TRAIN_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}
cd "$root"
[[ -f train/main.py ]] || { echo "slurm/train.sh: no train/main.py in $root; sbatch from the project folder or set TRAIN_ROOT" >&2; exit 2; }
[[ -x .venv/bin/accelerate && -z "${VIRTUAL_ENV:-}" ]] && export PATH="$root/.venv/bin:$PATH"

# A stable output folder per job (per array task), so that a requeued job finds its checkpoints and
# resumes (resume=auto). For train/main.py it is an override (an output_dir=... argument wins: later
# overrides replace earlier ones); a script of your own finds it in $TRAIN_OUTPUT_DIR.
job=${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}
export TRAIN_OUTPUT_DIR=runs/slurm-$job
# deterministic kernels (the default) need cuBLAS's fixed workspace, read when a process first uses it
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
# In a job array, %a in an argument is the task id, as in sbatch's file names:
#   sbatch --array=0-3 slurm/train.sh seed=%a
set -- "${@//%a/${SLURM_ARRAY_TASK_ID:-0}}"
sweep=0
if [[ ${1:-} == --sweep ]]; then
    sweep=1
    shift
elif [[ ${1:-} == *.py ]]; then
    [[ -f $1 ]] || { echo "slurm/train.sh: no such script: $1" >&2; exit 2; }
else
    set -- output_dir="$TRAIN_OUTPUT_DIR" "$@"  # train/main.py: an override, which a later output_dir=... replaces
fi
restarts=${SLURM_RESTART_COUNT:-0}
echo "slurm/train.sh: job $SLURM_JOB_ID${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}, ${SLURM_NNODES:-1} node(s)," \
     "SLURM_RESTART_COUNT=$restarts$( ((restarts > 0)) && echo ': resuming from the latest checkpoint')"

preempted=0
forward_usr1() {
    # the time limit (or `scancel --batch --signal=USR1`) is near: pass it to the training processes,
    # which save a checkpoint at the next step boundary and exit
    preempted=1
    echo "slurm/train.sh: USR1 received; asking the training processes to checkpoint and stop"
    scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || true
    # a search's worker, too: between trials no step would hear it, and it must start no more
    (( sweep )) && [[ -n ${step:-} ]] && kill -USR1 "$step" 2>/dev/null || true
}
trap forward_usr1 USR1

# One `accelerate launch` per node (slurm/step.sh: launch/multinode.sh on each node, under the
# supervisor, which restarts the node's processes after a crash without giving up the allocation).
# A search (--sweep): this task is one of its workers, taking trials from the study in the search's
# folder until it has N; each trial is one slurm/step.sh. A requeued worker continues its trial.
if (( sweep )); then
    # this script's USR1 trap reaches the trials' processes (scancel): the worker need not pass it on
    SWEEP_FORWARD_SIGNALS=0 python -m train.sweep --launch slurm/step.sh "$@" &
else
    slurm/step.sh "$@" &
fi
step=$!
status=0
wait "$step" || status=$?
# a trapped signal ends `wait` early (status 138): wait again until the training processes have
# saved and exited, and keep the status of that last wait
while kill -0 "$step" 2>/dev/null; do status=0; wait "$step" || status=$?; done
if (( preempted && status != 0 )); then
    echo "slurm/train.sh: checkpoint saved; requeueing job $SLURM_JOB_ID (it resumes where it stopped)"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"
