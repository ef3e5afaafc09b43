#!/usr/bin/env bash
# One GPU (the first). Arguments: [script.py] then overrides, e.g. mixed_precision=bf16.
set -euo pipefail
source "$(dirname "$0")/common.sh"
supervise -- accelerate launch --quiet --config_file "$root/launch/gpu1.yaml" --mixed_precision "${MIXED_PRECISION:-no}" "$script" "$@"
