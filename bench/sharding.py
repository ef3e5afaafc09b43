"""Sharding and background saves, side by side in one run on 2 CPU ranks (issue 28's benchmark).

    python bench/sharding.py [--json bench/out/sharding.json]

Launches two real gloo ranks (`accelerate launch`) once per strategy (`ddp`, `fsdp`; one launch
each: a process's Accelerate state takes one strategy) over the same model of about 50 MB (an MLP
of 12.6 M fp32 parameters) and reports, per process:
- the memory of parameters + gradients + optimizer state it holds (Adam: two moments), counted from
  the tensors themselves (a sharded tensor's local part), and the peak RSS;
- the time of an optimizer step (the median of the class front's `fit` epochs after a warm-up);
- the time a checkpoint save blocks training, synchronous and in the background
  (`checkpoint.async_save`; the medians of 3 saves each, the background write waited for between).
Ratios are taken within the run: `fsdp` / `ddp` memory and step, async / sync blocking.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH, DEPTH, FEATURES, CLASSES, SAMPLES, BATCH = 2048, 4, 1024, 10, 1024, 32


def worker(strategy: str, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    import train
    from accelerate import PartialState

    torch.manual_seed(0)
    layers = [torch.nn.Linear(FEATURES, WIDTH), torch.nn.ReLU()]
    for _ in range(DEPTH - 1):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, CLASSES))
    x = torch.randn(SAMPLES, FEATURES)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, CLASSES, (SAMPLES,)))
    model = train.Model(net)
    model.compile(torch.nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-4), strategy=strategy,
                  fsdp={"wrap": ["Linear"]})
    history = model.fit(4, torch.utils.data.DataLoader(data, batch_size=BATCH), output_dir=str(out.parent / strategy),
                        progress=False, checkpoint=True)
    steps = SAMPLES // (BATCH * PartialState().num_processes)
    step_s = statistics.median(history["epoch_s"].tolist()[1:]) / steps
    run = model._run
    loop, manager = run.loop, run.checkpoint
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    params = [p for g in loop.optimizer.param_groups for p in g["params"]]
    param_bytes = sum(local(p).numel() * local(p).element_size() for p in params)
    optim_bytes = sum(local(v).numel() * local(v).element_size() for s in loop.optimizer.state_dict()["state"].values()
                      for k, v in s.items() if k != "step")
    blocked = {}
    for background in (False, True):
        times = []
        for _ in range(3):
            loop.accelerator.wait_for_everyone()
            start = time.perf_counter()
            manager.save(background=background)
            times.append(time.perf_counter() - start)
            manager.wait_for_write()  # not counted: training would go on meanwhile
            loop.step += 1  # the next save is another checkpoint
        blocked["async" if background else "sync"] = statistics.median(times)
    result = {"strategy": strategy, "params_grads_optimizer_mb": (2 * param_bytes + optim_bytes) / 2**20,
              "total_parameters_mb": sum(p.numel() * 4 for p in net.parameters()) / 2**20 if strategy == "ddp"
              else None, "step_s": step_s, "save_blocks_s": blocked,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rank = PartialState().process_index
    (out.parent / f"{out.stem}-{rank}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=2, metavar=("STRATEGY", "OUT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        for strategy in ("ddp", "fsdp"):
            out = Path(tmp) / strategy / "result"
            out.parent.mkdir()
            cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                   os.environ.get("MAIN_PORT", "29517"), __file__, "--worker", strategy, str(out)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{strategy} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
            results[strategy] = [json.loads((out.parent / f"result-{r}.json").read_text()) for r in (0, 1)]
    ddp, fsdp = results["ddp"][0], results["fsdp"][0]
    print(f"model: {results['ddp'][0]['total_parameters_mb']:.1f} MB of fp32 parameters; 2 CPU ranks, batch {BATCH} "
          f"per process")
    print("| per process (rank 0) | ddp | fsdp | fsdp / ddp |\n|---|---:|---:|---:|")
    for label, key in (("parameters + gradients + Adam state (MB)", "params_grads_optimizer_mb"),
                       ("peak RSS (MB)", "peak_rss_mb"), ("optimizer step (ms)", "step_s")):
        scale = 1000 if key == "step_s" else 1
        a, b = ddp[key] * scale, fsdp[key] * scale
        print(f"| {label} | {a:,.1f} | {b:,.1f} | {b / a:.2f} |")
    print("| a save blocks training (ms) | sync | async | async / sync |")
    for name, r in (("ddp", ddp), ("fsdp", fsdp)):
        s, a = r["save_blocks_s"]["sync"] * 1000, r["save_blocks_s"]["async"] * 1000
        print(f"| {name} | {s:,.1f} | {a:,.1f} | {a / s:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
