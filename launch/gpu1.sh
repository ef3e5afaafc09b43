#!/usr/bin/env bash
# One GPU (the first). Arguments are config overrides, e.g. mixed_precision=bf16.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec accelerate launch --config_file "$root/launch/gpu1.yaml" "$root/train/main.py" "$@"
