#!/usr/bin/env bash
# Two CPU processes (gloo) on this machine. In accelerate 1.x `--cpu --num_processes 2` and a MULTI_CPU
# config file without mpirun both start ONE process; this form starts two real ranks. Each rank gets
# half the cores. Arguments are config overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
threads=$(( $(nproc) / 2 )); (( threads > 0 )) || threads=1
ACCELERATE_USE_CPU=1 exec accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision no --dynamo_backend no --num_cpu_threads_per_process "$threads" "$root/train/main.py" "$@"
