#!/usr/bin/env bash
# One process: the CPU, or the first GPU when there is one. Arguments are config overrides.
# `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise; a lone process should use every core.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# --quiet: our one-line error without accelerate's CalledProcessError traceback after it (it still exits 1;
# `python train/main.py` returns the codes listed in train/errors.py)
exec accelerate launch --quiet --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    --num_cpu_threads_per_process "$(nproc)" "$root/train/main.py" "$@"
