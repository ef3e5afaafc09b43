#!/usr/bin/env bash
# One job step inside an sbatch allocation: one `accelerate launch` per node (launch/multinode.sh, under
# the supervisor), rank 0 on the allocation's first host. slurm/train.sh runs it once for a run; a
# search (slurm/train.sh --sweep ...) runs it once per trial:  slurm/step.sh [script.py] [key=value ...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -n ${SLURM_JOB_ID:-} ]] || { echo "slurm/step.sh: runs inside an sbatch job (no SLURM_JOB_ID)" >&2; exit 2; }
nodes=${SLURM_NNODES:-1}
# the port comes from the job id, so that two jobs sharing a node do not collide. Each job owns
# MAX_RESTARTS + 1 ports: a restart after a crash uses the next one (launch/multinode.sh), and
# consecutive job ids (array tasks) do not overlap.
main_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=$(( 20000 + (SLURM_JOB_ID % 4000) * (${MAX_RESTARTS:-3} + 1) ))
# The node rank must be read on each node: \$SLURM_NODEID is escaped so that the task's shell expands
# it, not this one (else every node is rank 0). USR1 is ignored from here down (trap ''), so that no
# launcher dies of it; the supervisor and the training processes install their own handlers, and the
# supervisor passes it on.
exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \
    "trap '' USR1; RDZV_BACKEND=c10d MAIN_PORT=$port exec '$root/launch/multinode.sh' \$SLURM_NODEID $nodes \
     $main_addr \"\$@\"" srun-task "$@"
