#!/usr/bin/env bash
# fp16 autocast with a gradient scaler, on every GPU of the node (fp16 needs a GPU). Arguments:
# overrides for train/main.py.
set -euo pipefail
exec "$(dirname "$0")/gpus.sh" mixed_precision=fp16 "$@"
