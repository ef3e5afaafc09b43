#!/usr/bin/env bash
# Two CPU processes (gloo) on this machine. In accelerate 1.x `--cpu --num_processes 2` and a
# MULTI_CPU config file without mpirun both start ONE process; ACCELERATE_USE_CPU=1 with --multi_gpu
# starts two real ranks. Each rank gets half the cores. Arguments: [script.py] then overrides.
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(( $(nproc) / 2 )); (( threads > 0 )) || threads=1
export ACCELERATE_USE_CPU=1
supervise --filter-launcher -- accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision "${MIXED_PRECISION:-no}" --dynamo_backend no --num_cpu_threads_per_process "$threads" "$script" "$@"
