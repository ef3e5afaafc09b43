#!/usr/bin/env bash
# fp16 autocast with a gradient scaler, on every GPU of the node (fp16 needs a GPU). Arguments are
# config overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/launch/gpus.sh" mixed_precision=fp16 "$@"
