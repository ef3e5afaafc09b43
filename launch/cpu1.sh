#!/usr/bin/env bash
# One CPU process even on a GPU machine (launch/cpu1.yaml: use_cpu). Arguments: [script.py] then overrides.
set -euo pipefail
source "$(dirname "$0")/common.sh"
supervise -- accelerate launch --quiet --config_file "$root/launch/cpu1.yaml" --mixed_precision "${MIXED_PRECISION:-no}" \
    --num_cpu_threads_per_process "$(nproc)" "$script" "$@"
