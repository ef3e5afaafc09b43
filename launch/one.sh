#!/usr/bin/env bash
# One process: the CPU, or the first GPU when there is one. Arguments are config overrides.
# `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise; a lone process should use every core.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    --num_cpu_threads_per_process "$(nproc)" "$root/train/main.py" "$@"
