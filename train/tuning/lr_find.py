"""Learning-rate finder:

    python -m train.lr_find --config CONFIG [key=value ...] [--steps 100] [--min-lr 1e-8] [--max-lr 1]
    launch/cpu2.sh train/lr_find.py --config CONFIG ...        (N processes, as the run would have)

Builds the config's model, optimizer and data exactly as a run does (a fresh copy: the same seed,
the same initial weights) and trains for at most `--steps` optimizer steps while the learning rate
rises exponentially from `--min-lr` to `--max-lr`. The loss (averaged over processes) is smoothed
with an exponential moving average; the search stops once the smoothed loss exceeds 4 times its
lowest (it diverged). The suggestion is the rate where the smoothed loss falls fastest, the
steepest descent of the curve (the method of Lightning's `lr_find`): a rate that still trains
fast, well below the one that diverges. Writes `lr_find.csv` and `lr_find.png` to `--out`
(default `<output_dir>-lr_find`), never into the run's output folder, and prints one line:
`suggested: optimizer.lr=...`. The config's schedule is not used here (the ramp is the schedule).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


from train.supervision.reports import ended_by
from train.base.errors import ConfigError, RunError  # noqa: E402
from train.base.paths import DEFAULT_CONFIG

SMOOTHING = 0.98  # as Lightning and fastai: an exponential moving average over about 50 steps
DIVERGED = 4.0  # stop when the smoothed loss exceeds this many times the lowest (measured from 0)
SKIP_BEGIN, SKIP_END = 10, 1  # the curve's ends are noise (the average starts cold; the last step diverged)


def learning_rates(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`steps` rates rising exponentially (evenly on a log scale) from `min_lr` to `max_lr`."""
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / max(steps - 1, 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (the first values are not pulled toward 0)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def suggest(lrs: list[float], smoothed: list[float]):
    """The rate at the steepest descent of the smoothed loss (unit spacing: per step of the log
    scale), the curve's ends left out; None when too few finite points remain."""
    import numpy as np

    points = [(lr, loss) for lr, loss in list(zip(lrs, smoothed))[SKIP_BEGIN:len(lrs) - SKIP_END]
              if math.isfinite(loss)]
    if len(points) < 2:
        return None
    gradient = np.gradient(np.array([loss for _, loss in points]))
    return points[int(gradient.argmin())][0]


def find(cfg, steps: int, min_lr: float, max_lr: float):
    """Ramp the rate over a fresh copy of the run; returns (rates, losses) of the steps taken."""
    from train.data.streams import is_stream
    from train.fronts.from_config import build_run
    from train.engine.rounds import set_epoch

    cfg.scheduler.name = "none"  # the ramp sets the rate; the config's schedule would fight it
    run, loaders = build_run(cfg)
    try:
        if is_stream(loaders.train.dataset):  # its shares end apart across processes: no fixed ramp
            raise ConfigError("the learning-rate finder needs a map-style training set; a stream has no fixed "
                              "order of batches across processes (find the rate on a map-style sample of it)")
        dl = run.prepare(loaders.train)
        rates = learning_rates(min_lr, max_lr, steps)
        taken, losses, pending, epoch, best = [], [], [], 0, math.inf
        run.set_learning_rate(rates[0])
        while len(losses) < steps:
            set_epoch(dl, epoch)
            batches = 0
            for batch in dl:
                batches += 1
                loss, _, _ = run.train_step(*run.split(batch))
                pending.append(loss.float())
                if not run.stepped:
                    continue  # accumulating gradients: one rate per optimizer step
                import torch

                mean = run.accelerator.reduce(torch.stack(pending).mean(), "mean").item()  # the same on every process
                pending = []
                taken.append(rates[len(losses)])
                losses.append(mean if math.isfinite(mean) else math.inf)
                smoothed = smooth(losses)[-1]
                best = min(best, smoothed)
                # for a loss that may be negative (a log-likelihood), the margin is measured from the lowest
                if len(losses) >= steps or not math.isfinite(smoothed) or \
                        smoothed > best + (DIVERGED - 1) * abs(best):
                    return taken, losses
                run.set_learning_rate(rates[len(losses)])
            if not batches:
                raise ConfigError("the training data gave no batch; give more data or a smaller batch_size")
            epoch += 1
        return taken, losses
    finally:
        run.close()


def print_once(text: str) -> None:
    from train.base.text import wrapped
    from train.engine.events import print_once as once

    once(wrapped(text))


def main(argv=None) -> int:
    from train.config.loading import load_config

    parser = argparse.ArgumentParser(prog="python -m train.lr_find", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps at most (default 100)")
    parser.add_argument("--min-lr", type=float, default=1e-8, help="the first rate (default 1e-8)")
    parser.add_argument("--max-lr", type=float, default=1.0, help="the last rate (default 1)")
    parser.add_argument("--out", help="where lr_find.csv and lr_find.png go (default <output_dir>-lr_find)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        if not 0 < args.min_lr < args.max_lr:
            raise ConfigError(f"--min-lr and --max-lr need 0 < min < max, got {args.min_lr} and {args.max_lr}")
        if args.steps < SKIP_BEGIN + SKIP_END + 2:
            raise ConfigError(f"--steps must be at least {SKIP_BEGIN + SKIP_END + 2}, got {args.steps}")
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out or f"{cfg.output_dir.rstrip('/')}-lr_find")
        if out.resolve().is_relative_to(Path(cfg.output_dir).resolve()):
            raise ConfigError(f"--out {out} is inside the run's output folder {cfg.output_dir}; the finder writes "
                              f"elsewhere")
        rates, losses = find(cfg, args.steps, args.min_lr, args.max_lr)
    except RunError as e:
        if args.debug:
            raise
        return ended_by(e)
    smoothed = smooth(losses)
    suggestion = suggest(rates, smoothed)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        import pandas as pd

        from train.base.files import atomic_write_text
        from train.callbacks.plots import plot_lr_find

        out.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"lr": rates, "loss": losses, "smoothed": smoothed})
        atomic_write_text(out / "lr_find.csv", frame.to_csv(index=False))
        plot_lr_find(rates, losses, smoothed, suggestion, out / "lr_find.png")
    ended = "; stopped there: the loss diverged" if len(losses) < args.steps else ""
    print_once(f"lr_find: {len(losses)} steps, the rate rising from {args.min_lr:g} to {rates[-1]:.3g}{ended}; "
               f"{out}/lr_find.csv, {out}/lr_find.png")
    if suggestion is None:
        print_once("no suggestion: the loss did not fall over the steps taken; widen --min-lr/--max-lr or give "
                   "more --steps")
        return 1
    print_once(f"suggested: optimizer.lr={suggestion:.3g}")
    return 0
