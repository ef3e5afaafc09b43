#!/usr/bin/env bash
# bf16 autocast: on every GPU of the node, or in one CPU process where there is none (CPUs with
# AVX-512 BF16 or AMX run it fast). Arguments are config overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if nvidia-smi -L >/dev/null 2>&1; then exec "$root/launch/gpus.sh" mixed_precision=bf16 "$@"; fi
exec "$root/launch/one.sh" mixed_precision=bf16 "$@"
