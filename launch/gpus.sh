#!/usr/bin/env bash
# Every GPU of this node, one process each. Arguments: [script.py] then overrides.
set -euo pipefail
here=$(dirname "$0")
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)  # no nvidia-smi at all: 0 GPUs
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then  # the GPUs this process was given (a search's worker, a job's share)
    IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"
    gpus=$(( ${#visible[@]} < gpus ? ${#visible[@]} : gpus ))
fi
if (( gpus == 0 )); then echo "launch/gpus.sh: no GPU found (nvidia-smi -L); use launch/one.sh or launch/cpu2.sh" >&2; exit 2; fi
if (( gpus == 1 )); then exec "$here/gpu1.sh" "$@"; fi
source "$here/common.sh"
supervise --filter-launcher -- accelerate launch --config_file "$root/launch/gpus.yaml" --mixed_precision "${MIXED_PRECISION:-no}" --num_processes "$gpus" \
    "$script" "$@"
