"""Preflight: prove a configuration works before spending an allocation on it.

`accelerate launch train/main.py preflight=true ...` runs two training and two validation batches
on every process, checks that every process computes the same metric keys, does a checkpoint
save/load round trip, and reports the estimated epoch time and peak memory. Exit 0 when all is
well; otherwise exit 1 with one line that names the stage and the reason. Nothing is written to
`output_dir`.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from train.base.errors import PreflightError, UserError, describe
from train.data.streams import is_stream
from train.engine.rounds import batches_per_epoch
from train.engine.metrics import EpochSums
from train.engine.timing import peak_memory_mb


def _stage(name: str, fn):
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:  # any failure here is the finding preflight exists to report
        raise PreflightError(f"preflight failed at {name}: {describe(e)}") from e


def _batches(dl, n):
    out = []
    for batch in dl:
        out.append(batch)
        if len(out) == n:
            break
    return out


def preflight(run, loaders) -> dict:
    """Run the checks on `run` (a `train.Run`) with the config's `loaders`; returns the report."""
    acc = run.accelerator
    train_dl = run.prepare(loaders.train)
    val_dl = run.prepare(loaders.val)
    train_dl.set_epoch(0)
    sums = EpochSums(run.metrics, run.device)

    def train_batches():
        times = []
        for features, labels in map(run.split, _batches(train_dl, 2)):
            start = time.perf_counter()
            loss, preds, labels = run.train_step(features, labels)
            sums.add(loss, preds, labels)
            value = float(loss)  # a sync, so the time includes the work
            times.append(time.perf_counter() - start)
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss is {value}")
        return times

    def val_batches():
        times = []
        for features, labels in map(run.split, _batches(val_dl, 2)):
            start = time.perf_counter()
            loss, _, _ = run.eval_step(features, labels)
            float(loss)
            times.append(time.perf_counter() - start)
        return times

    def metric_keys():
        keys = sorted(sums.result(acc))
        every = [keys]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            every = gather_object([keys])
        if any(k != keys for k in every):
            raise RuntimeError(f"processes computed different metric keys: {every}")
        return keys

    def checkpoint_round_trip():
        # beside output_dir, not in it, and on the same (shared) file system: every node reads it back
        out = Path(run.options.output_dir or "preflight").resolve()
        folder = str(out.with_name(f".{out.name}.preflight"))
        acc.save_state(folder)
        acc.wait_for_everyone()  # the main process writes; nobody reads before it is done
        saved = [p.detach().clone() for p in run.parameters()]
        run.train_step(*run.split(next(iter(train_dl))))  # move the weights, so that loading has something to undo
        acc.load_state(folder)
        same = all(torch.equal(a, b) for a, b in zip(saved, run.parameters()))
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
        if not same:
            raise RuntimeError("weights after load_state differ from those saved")

    _stage("the model and the data", lambda: run.check_model_takes(train_dl))
    train_times = _stage("training batches", train_batches)
    val_times = _stage("validation batches", val_batches) if val_dl is not None else []
    keys = _stage("metric keys", metric_keys)
    _stage("checkpoint round trip", checkpoint_round_trip)

    per_train = train_times[-1]  # the first batch pays for warm-up
    per_val = val_times[-1] if val_times else 0.0
    batches = batches_per_epoch(train_dl, run.options.steps_per_epoch, run.accelerator.gradient_accumulation_steps)
    validation = 0 if val_dl is None or is_stream(val_dl.dataset) else len(val_dl)
    epoch_s = per_train * batches + per_val * validation if batches is not None else None
    peak_mb = peak_memory_mb(run.device)
    where = "GPU memory" if run.device.type == "cuda" else "RSS"
    report = dict(processes=acc.num_processes, metric_keys=keys, estimated_epoch_s=epoch_s, peak_mb=peak_mb)
    if acc.is_main_process:
        print(f"preflight ok: 2 training and {len(val_times)} validation batches on {acc.num_processes} "
              f"process(es); metric keys {', '.join(keys)} on every process; checkpoint round trip ok; "
              + (f"estimated epoch {epoch_s:.1f} s" if epoch_s is not None else "epoch time unknown (a stream)")
              + f"; peak {where} {peak_mb:.0f} MB per process", flush=True)
    return report
