#!/usr/bin/env bash
# One node's share of a multi-node run: launch/multinode.sh NODE_RANK NUM_NODES MAIN_ADDR [key=value ...]
# Run it on every node (NODE_RANK 0..NUM_NODES-1), all with the same MAIN_ADDR (node 0's address).
# One process per GPU; on a node without GPUs, CPU_PROCESSES_PER_NODE gloo processes (default 1).
# MAIN_PORT (default 29500) must be free on node 0; RDZV_BACKEND: static (default: node ranks as
# given) or c10d (what slurm/train.sh uses). Try it on one machine before using an allocation:
#   launch/multinode.sh 0 2 127.0.0.1 epochs=1 & launch/multinode.sh 1 2 127.0.0.1 epochs=1; wait
set -euo pipefail
(( $# >= 3 )) || { echo "usage: launch/multinode.sh NODE_RANK NUM_NODES MAIN_ADDR [key=value ...]" >&2; exit 2; }
node_rank=$1 nodes=$2 main_addr=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
if (( gpus > 0 )); then
    per_node=$gpus
else
    per_node=${CPU_PROCESSES_PER_NODE:-1}
    export ACCELERATE_USE_CPU=1  # with --multi_gpu: gloo processes on the CPU (see FACTS: --cpu starts one)
fi
cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
threads=$(( cpus / per_node )); (( threads > 0 )) || threads=1
if (( nodes * per_node == 1 )); then  # accelerate refuses --multi_gpu for a single process
    exec accelerate launch --num_processes 1 --num_machines 1 --mixed_precision "${MIXED_PRECISION:-no}" \
        --dynamo_backend no --num_cpu_threads_per_process "$threads" "$root/train/main.py" "$@"
fi
exec accelerate launch --multi_gpu --num_machines "$nodes" --num_processes $(( nodes * per_node )) \
    --machine_rank "$node_rank" --main_process_ip "$main_addr" --main_process_port "${MAIN_PORT:-29500}" \
    --rdzv_backend "${RDZV_BACKEND:-static}" --mixed_precision "${MIXED_PRECISION:-no}" \
    --dynamo_backend no --num_cpu_threads_per_process "$threads" "$root/train/main.py" "$@"
