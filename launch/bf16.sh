#!/usr/bin/env bash
# bf16 autocast: on every GPU of the node, or in one CPU process where there is none (CPUs with
# AVX-512 BF16 or AMX run it fast). Arguments: overrides for train/main.py.
set -euo pipefail
here=$(dirname "$0")
if nvidia-smi -L >/dev/null 2>&1; then exec "$here/gpus.sh" mixed_precision=bf16 "$@"; fi
exec "$here/one.sh" mixed_precision=bf16 "$@"
