#!/usr/bin/env bash
# fp16 autocast with a gradient scaler, on every GPU of the node (fp16 needs a GPU). Arguments:
# [script.py] then overrides or the script's own arguments; the precision reaches the script
# through `accelerate launch --mixed_precision fp16`.
set -euo pipefail
export MIXED_PRECISION=fp16
exec "$(dirname "$0")/gpus.sh" "$@"
