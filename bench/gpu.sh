#!/usr/bin/env bash
# The GPU check of the speed issue, prepared as one script for a session that is lent a GPU
# (run it from the repository root on the device machine: `bash bench/gpu.sh`). It uses the
# machine's own python3, which already has torch, accelerate, lightning, pandas and matplotlib;
# torchkeras is not there, so that peer is left out unless its wheel is carried.
# Writes everything under $OUT (default bench/out/gpu): device.txt, bench.txt/gpu.json (the
# side-by-side benchmark on the whole training set), fast.txt and fast_history.csv
# (configs/mnist_fast.yaml), main.txt and main_history.csv (the reference job, 3 epochs).
# Not yet run on a GPU: the first session with a device records its figures in bench/RESULTS.md.
set -uo pipefail
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"; } \
    2>&1 | tee "$out/device.txt"
timeout 300 python3 bench/run.py --samples 60000 --rounds 3 --json "$out/gpu.json" 2>&1 | tee "$out/bench.txt"
timeout 120 python3 train/main.py --config configs/mnist_fast.yaml output_dir="$out/fast" 2>&1 | tail -6 | tee "$out/fast.txt"
cp "$out/fast/history.csv" "$out/fast_history.csv" 2>/dev/null
timeout 120 python3 train/main.py epochs=3 progress=false output_dir="$out/main" 2>&1 | tail -6 | tee "$out/main.txt"
cp "$out/main/history.csv" "$out/main_history.csv" 2>/dev/null
rm -rf "$out/fast" "$out/main"   # only plain files come back from the device
