#!/usr/bin/env bash
# One CPU process even on a GPU machine ("$root/launch/cpu1.yaml": use_cpu). Arguments are config overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec accelerate launch --config_file "$root/launch/cpu1.yaml" --num_cpu_threads_per_process "$(nproc)" "$root/train/main.py" "$@"
