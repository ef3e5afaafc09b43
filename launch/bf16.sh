#!/usr/bin/env bash
# bf16 autocast: on every GPU of the node, or in one CPU process where there is none (fast on CPUs
# with AVX-512 BF16 or AMX; emulated, several times slower than fp32, elsewhere: the plan says
# which). Arguments: [script.py] then overrides or the script's own arguments; the precision
# reaches the script through `accelerate launch --mixed_precision bf16` (a config's or fit()'s
# mixed_precision, when set, wins).
set -euo pipefail
here=$(dirname "$0")
export MIXED_PRECISION=bf16
if nvidia-smi -L >/dev/null 2>&1; then exec "$here/gpus.sh" "$@"; fi
exec "$here/one.sh" "$@"
