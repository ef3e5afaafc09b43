#!/usr/bin/env bash
# The GPU checks and figures in one run: `bash bench/gpu.sh` from the repository root of a machine
# with CUDA (about 8 minutes on an H200). It prints the GPU and the versions, runs the `gpu`-marked
# tests (tests/gpu: exact resume with the defaults, mixed precision, the fast path on the device,
# the step in one CUDA graph), the side-by-side benchmark on the whole training set (bench/run.py,
# with the graphed floor and `fit` with graphs), the reference job (3 epochs) with deterministic
# kernels (the default), without, and with graphs, and the speed recipe (configs/mnist_fast.yaml)
# eager and with graphs, and writes under $OUT (default bench/out/gpu): log.txt (all it printed),
# gpu.json (the benchmark's figures) and each run's history (main_history.csv,
# main_nondeterministic_history.csv, main_graphs_history.csv, fast_history.csv, fast_graphs_history.csv). It uses `python3` as found on PATH (torch, accelerate,
# pandas, matplotlib, pytest; lightning and torchkeras are compared when installed), and the
# project from this tree (PYTHONPATH; no install).
set -uo pipefail
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
exec > >(tee "$out/log.txt") 2>&1
nvidia-smi -L
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"
started=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - started )) s)"; }
stage "gpu tests"
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu -rs 2>&1 | tail -25
stage "benchmark"
timeout 200 python3 bench/run.py --samples 60000 --rounds 3 --skip-jobs --json "$out/gpu.json"
run_job() {  # NAME ARGS...: one run of train/main.py, its last lines and history kept
    local name=$1; shift
    stage "$name"
    local t0; t0=$(date +%s.%N)
    timeout 120 python3 train/main.py "$@" progress=false output_dir="$out/$name" > "$out/$name.log" 2>&1
    tail -8 "$out/$name.log"
    echo "wall $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s (the whole command)"
    grep -m1 -A1 "deterministic" "$out/$name.log"
    grep -A1 "graphs:\|optimizer:" "$out/$name.log" | head -4
    rm -f "$out/$name.log"
    cp "$out/$name/history.csv" "$out/${name}_history.csv" 2>/dev/null
    rm -rf "${out:?}/$name"   # only plain files come back from the device
}
run_job main epochs=3
run_job main_nondeterministic epochs=3 deterministic=false
run_job main_graphs epochs=3 graphs=true
run_job fast --config configs/mnist_fast.yaml
# the recipe's one-cycle schedule cycles Adam's betas, which a graph holds as constants: not cycled here
run_job fast_graphs --config configs/mnist_fast.yaml graphs=true "scheduler.args={cycle_momentum: false}"
stage "done"
