#!/usr/bin/env bash
# The speed figures on a GPU, in one script: `bash bench/gpu.sh` from the repository root of a
# machine with CUDA. It prints the GPU and the versions, runs the side-by-side benchmark on the whole
# training set (bench/run.py), the speed recipe (configs/mnist_fast.yaml) and the reference job
# (3 epochs), and writes under $OUT (default bench/out/gpu): device.txt, bench.txt and gpu.json,
# fast.txt and fast_history.csv, main.txt and main_history.csv. It uses `python3` as found on PATH
# (torch, accelerate, pandas, matplotlib; lightning and torchkeras are compared when installed).
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
