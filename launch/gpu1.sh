#!/usr/bin/env bash
# One GPU (the first). Arguments are config overrides, e.g. mixed_precision=bf16.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# --quiet: our one-line error without accelerate's CalledProcessError traceback after it (it still exits 1;
# `python train/main.py` returns the codes listed in train/errors.py)
exec accelerate launch --quiet --config_file "$root/launch/gpu1.yaml" "$root/train/main.py" "$@"
