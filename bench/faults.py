"""What a failure costs, side by side in one run: the tutorial CNN on 2 CPU ranks under
`launch/cpu2.sh` (the supervisor), N epochs of MNIST samples, a disk checkpoint every 8 optimizer
steps; uninterrupted, and with a random rank SIGKILLed about every `--every` seconds, before (cold
restarts: every process started afresh, disk checkpoints only) and after (warm restarts forked from
the supervisor's template, and a memory checkpoint every optimizer step). Each interrupted run must end
bit-identical to the uninterrupted one (weights and history).

    python bench/faults.py [--samples 16384] [--epochs 4] [--every 20] [--rounds 3] [--seed 0] [--json FILE]

The runs interleaved in rounds (A B C D E, A B C D E, ...), each round's kills from its own seed,
the same moments for every interrupted variant. End to end, summed over the rounds: seconds lost per
failure = (wall - the same settings' uninterrupted wall) / failures, and goodput = the plain
uninterrupted wall (no memory checkpoints) / wall: what the failures and the memory checkpoints'
own cost took from the job. The uninterrupted walls are the medians of the rounds. The supervisor's own figures (its `failures.json`: the time from the
failed attempt's last step until a later attempt was back at that step) and the phases of each
restart (detection, teardown, processes started, state loaded, first step) are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

# the tests' own way to find the training processes from outside and to compare two runs
from conftest import assert_same_run, rank_processes  # noqa: E402

MEMORY = ["checkpoint.memory_every_steps=1"]
VARIANTS = {  # name: (environment, overrides, the uninterrupted run of the same settings, or None)
    "uninterrupted": ({}, [], None),
    "uninterrupted, no standby": ({"WARM_RESTARTS": "0"}, [], None),
    "uninterrupted, memory checkpoints": ({}, MEMORY, None),
    "before: cold restarts, disk checkpoints": ({"WARM_RESTARTS": "0"}, [], "uninterrupted, no standby"),
    "after: warm restarts, disk checkpoints": ({}, [], "uninterrupted"),
    "after: warm restarts, memory checkpoints": ({}, MEMORY, "uninterrupted, memory checkpoints"),
}


def job(out: Path, args, env: dict, extra: list[str], kills: random.Random | None) -> dict:
    """Run the job once; SIGKILL a random training rank every ~args.every s when `kills` is given."""
    command = [str(ROOT / "launch" / "cpu2.sh"), f"data.path={ROOT / 'data' / 'mnist'}",
               f"data.train_size={args.samples}", "data.val_size=2048", f"epochs={args.epochs}", "seed=0",
               "checkpoint.every_steps=8", "progress=false", f"output_dir={out}", *extra]
    environ = dict(os.environ, PYTHONUNBUFFERED="1", MAX_RESTARTS="20", MAIN_PORT=str(args.port), **env)
    started = time.monotonic()
    proc = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    killed = []
    first = True
    while proc.poll() is None and kills is not None:  # the first at a random phase, then every ~args.every s
        deadline = time.monotonic() + (kills.uniform(0, 1) if first else kills.uniform(0.75, 1.25)) * args.every
        first = False
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks = rank_processes(proc.pid, "main.py")
        while proc.poll() is None and len(ranks) < 2:  # a restart under way: the next moment both train
            time.sleep(0.05)
            ranks = rank_processes(proc.pid, "main.py")
        if proc.poll() is None:
            victim = kills.randrange(2)
            try:
                os.kill(ranks[victim], signal.SIGKILL)
                killed.append(round(time.monotonic() - started, 1))
            except ProcessLookupError:
                pass
    proc.wait()
    wall = time.monotonic() - started
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"{out.name}: exit {proc.returncode}\n{''.join(log)[-4000:]}")
    failures = out / "failures.json"
    return {"wall_s": wall, "kills_at_s": killed, "log": "".join(log),
            "supervisor": json.loads(failures.read_text()) if failures.exists() else None}


def phases(restarts: list[dict]) -> dict:
    """The median of each restart phase the supervisor timed (its `failures.json`: every figure of
    a restart in seconds but the loss), in the order it writes them."""
    names = dict.fromkeys(k for r in restarts for k in r if k.endswith("_s") and k != "lost_s")
    return {n: statistics.median(r[n] for r in restarts if r.get(n) is not None)
            for n in names if any(r.get(n) is not None for r in restarts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=float, default=20.0, help="seconds between kills (each +-25%%)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the kills' moments and victims")
    parser.add_argument("--port", type=int, default=29700)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, (env, extra, baseline) in VARIANTS.items():
                out = Path(tmp) / f"{round_}-{name.replace(':', '').replace(',', '').replace(' ', '-')}"
                kills = random.Random(args.seed + round_) if baseline else None
                result = job(out, args, env, extra, kills)
                reference = Path(tmp) / f"{round_}-uninterrupted"
                if baseline:  # weights bit for bit and the history as the uninterrupted run's
                    assert_same_run(out, reference, epochs=args.epochs, context=name)
                results[name].append(result)
                print(f"round {round_ + 1}, {name}: {result['wall_s']:.1f} s, kills at {result['kills_at_s']}",
                      flush=True)
    walls = {name: statistics.median(r["wall_s"] for r in runs) for name, runs in results.items()}
    print(f"\n{args.epochs} epochs of {args.samples} samples on 2 CPU ranks, a kill every ~{args.every:.0f} s, "
          f"{args.rounds} rounds (seed {args.seed}); every interrupted run ended bit-identical to the uninterrupted "
          f"one\n")
    print("| run | wall (s) | failures | lost per failure (s) | goodput | supervisor: lost per failure (s) "
          "| supervisor: goodput | restart phases, median (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    summary = {}
    for name, (_, _, baseline) in VARIANTS.items():
        runs = results[name]
        wall = sum(r["wall_s"] for r in runs)
        figures = [r["supervisor"] for r in runs if r["supervisor"]]
        n = sum(f["failures"] for f in figures)
        lost = sum(f["lost_s"] for f in figures)
        row = {"wall_s": round(wall / len(runs), 1) if baseline else round(walls[name], 1), "failures": n,
               "lost_s_per_failure": round((wall - len(runs) * walls[baseline]) / n, 1) if n else None,
               "goodput": round(len(runs) * walls["uninterrupted"] / wall, 3) if baseline else None,
               "supervisor_lost_s_per_failure": round(lost / n, 2) if n else None,
               "supervisor_goodput": round(1 - lost / sum(f["wall_s"] for f in figures), 3) if figures else None,
               "phases": phases([r for f in figures for r in f["restarts"]]),
               "kills_at_s": [r["kills_at_s"] for r in runs]}
        summary[name] = row

        def show(v, form="{}"):
            return "" if v is None else form.format(v)
        steps = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f}" for k, v in row["phases"].items())
        print(f"| {name} | {row['wall_s']} | {n} | {show(row['lost_s_per_failure'])} | "
              f"{show(row['goodput'], '{:.2f}')} | {show(row['supervisor_lost_s_per_failure'])} | "
              f"{show(row['supervisor_goodput'])} | {steps} |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
