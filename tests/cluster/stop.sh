#!/usr/bin/env bash
# Stop the daemons tests/cluster/start.sh started (by pid, nothing else) and wait for them to exit.
# Usage: tests/cluster/stop.sh [DIR]  (default /tmp/train-slurm)
set -uo pipefail
dir=$(realpath -m "${1:-/tmp/train-slurm}")
[[ -f "$dir/started.pids" ]] || exit 0
if [[ -f "$dir/slurm.conf" ]]; then  # no job outlives its cluster
    SLURM_CONF="$dir/slurm.conf" scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
fi
tac "$dir/started.pids" | while read -r pid name; do
    if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
done
rm -f "$dir/started.pids"
