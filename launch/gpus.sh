#!/usr/bin/env bash
# Every GPU of this node, one process each. Arguments are config overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if (( gpus == 0 )); then echo "launch/gpus.sh: no GPU found (nvidia-smi -L); use launch/one.sh or launch/cpu2.sh" >&2; exit 2; fi
if (( gpus == 1 )); then exec "$root/launch/gpu1.sh" "$@"; fi
exec accelerate launch --config_file "$root/launch/gpus.yaml" --num_processes "$gpus" "$root/train/main.py" "$@"
