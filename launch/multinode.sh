#!/usr/bin/env bash
# One node's share of a multi-node run:
#   launch/multinode.sh NODE_RANK NUM_NODES MAIN_ADDR [script.py] [key=value ...]
# Run it on every node (NODE_RANK 0..NUM_NODES-1), all with the same MAIN_ADDR (node 0's address).
# One process per GPU; on a node without GPUs, CPU_PROCESSES_PER_NODE gloo processes (default 1).
# MAIN_PORT (default 29500) must be free on node 0, and the next MAX_RESTARTS ports too: after a
# crash every node's supervisor restarts its launcher on port MAIN_PORT + restart number, so that
# the new processes never meet the old ones. RDZV_BACKEND: static (default: node ranks as given)
# or c10d (what slurm/train.sh uses). Try it on one machine before using an allocation:
#   launch/multinode.sh 0 2 127.0.0.1 epochs=1 & launch/multinode.sh 1 2 127.0.0.1 epochs=1; wait
set -euo pipefail
(( $# >= 3 )) || { echo "usage: launch/multinode.sh NODE_RANK NUM_NODES MAIN_ADDR [script.py] [key=value ...]" >&2; exit 2; }
node_rank=$1 nodes=$2 main_addr=$3
shift 3
source "$(dirname "$0")/common.sh"
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if (( gpus > 0 )); then
    per_node=$gpus
else
    per_node=${CPU_PROCESSES_PER_NODE:-1}
    export ACCELERATE_USE_CPU=1  # with --multi_gpu: gloo processes on the CPU (--cpu would start one)
fi
cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
threads=$(( cpus / per_node )); (( threads > 0 )) || threads=1
if (( nodes * per_node == 1 )); then  # accelerate refuses --multi_gpu for a single process
    supervise -- accelerate launch --quiet --num_processes 1 --num_machines 1 \
        --mixed_precision "${MIXED_PRECISION:-no}" --dynamo_backend no --num_cpu_threads_per_process "$threads" \
        "$script" "$@"
fi
export NODES=$nodes NODE_RANK=$node_rank MAIN_ADDR=$main_addr PROCESSES=$(( nodes * per_node )) THREADS=$threads
export MAIN_PORT=${MAIN_PORT:-29500} RDZV_BACKEND=${RDZV_BACKEND:-static} MIXED_PRECISION=${MIXED_PRECISION:-no}
# single quotes: the supervisor's bash expands TRAIN_RESTART afresh for each attempt
supervise --filter-launcher -- bash -c 'exec accelerate launch --multi_gpu --num_machines "$NODES" \
    --num_processes "$PROCESSES" --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_ADDR" \
    --main_process_port $(( MAIN_PORT + TRAIN_RESTART )) --rdzv_backend "$RDZV_BACKEND" \
    --mixed_precision "$MIXED_PRECISION" --dynamo_backend no --num_cpu_threads_per_process "$THREADS" "$@"' \
    node "$script" "$@"
