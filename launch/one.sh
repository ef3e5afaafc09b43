#!/usr/bin/env bash
# One process: the CPU, or the first GPU when there is one. Arguments: [script.py] then overrides
# (or the script's own arguments). `accelerate launch` sets OMP_NUM_THREADS=1 unless told
# otherwise; a lone process should use every core.
set -euo pipefail
source "$(dirname "$0")/common.sh"
# --quiet: no CalledProcessError traceback from the launcher after a failure (the supervisor
# reports the script's own exit code)
supervise -- accelerate launch --quiet --num_processes 1 --num_machines 1 --mixed_precision "${MIXED_PRECISION:-no}" --dynamo_backend no \
    --num_cpu_threads_per_process "$(nproc)" "$script" "$@"
