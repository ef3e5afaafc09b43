#!/usr/bin/env bash
# Two CPU processes (gloo) on this machine. In accelerate 1.x `--cpu --num_processes 2` and a
# MULTI_CPU config file without mpirun both start ONE process; ACCELERATE_USE_CPU=1 with --multi_gpu
# starts two real ranks. Each rank gets half the cores. Arguments: [script.py] then overrides.
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(( $(nproc) / 2 )); (( threads > 0 )) || threads=1
export ACCELERATE_USE_CPU=1
# MAIN_PORT (default 29500) and the next MAX_RESTARTS ports: each attempt its own, so that a restart
# never meets the last attempt's sockets (single quotes: the supervisor's bash expands TRAIN_RESTART)
export MAIN_PORT=${MAIN_PORT:-29500} MIXED_PRECISION=${MIXED_PRECISION:-no} THREADS=$threads
supervise --filter-launcher -- bash -c 'exec accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
    --main_process_port $(( MAIN_PORT + TRAIN_RESTART )) --mixed_precision "$MIXED_PRECISION" --dynamo_backend no \
    --num_cpu_threads_per_process "$THREADS" "$@"' cpu2 "$script" "$@"
