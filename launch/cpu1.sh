#!/usr/bin/env bash
# One CPU process even on a GPU machine ("$root/launch/cpu1.yaml": use_cpu). Arguments are config overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# --quiet: our one-line error without accelerate's CalledProcessError traceback after it (it still exits 1;
# `python train/main.py` returns the codes listed in train/errors.py)
exec accelerate launch --quiet --config_file "$root/launch/cpu1.yaml" --num_cpu_threads_per_process "$(nproc)" "$root/train/main.py" "$@"
