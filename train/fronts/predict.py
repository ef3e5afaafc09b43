"""Predict with a trained run: `python -m train.predict RUN_DIR [--data key=value ...] [--out FILE]`.

Rebuilds the run's model and data from its `config.yaml` (in the folder the run started from, so
it works from anywhere), loads its final weights (or `--checkpoint best|latest|step-...`), runs it
over the validation data (or what `--data` overrides name: another split, factory or path), and
writes one row per sample in data order: `index, target, prediction` (the arg-max class for a
classifier, else the output) and the raw outputs `output_0, output_1, ...`; then prints the
metrics and writes them beside the file (`FILE.metrics.json`). On N processes
(`launch/cpu2.sh train/predict.py RUN_DIR ...`) each process predicts its share and the rows are
gathered exactly (padding duplicates dropped). Exit 2 with one line for a bad folder or override.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from train.supervision.reports import ended_by
from train.base.errors import RunError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the output folder of a config run")
    parser.add_argument("--data", nargs="*", default=[], metavar="key=value",
                        help="overrides of the run's data section, e.g. val_split=test or factory=mypkg.data:other")
    parser.add_argument("--checkpoint", help="best, latest or step-NNNNNNNN instead of the final weights")
    parser.add_argument("--out", default=None, help="the CSV to write (default: RUN_DIR/predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=None, help="per process (default: the run's)")
    parser.add_argument("--raw", action="store_true", help="a run that averaged its weights (ema): the trained "
                                                           "weights instead of the averages")
    return parser.parse_args(argv)


def predict(run_dir, data_overrides=(), checkpoint=None, out=None, batch_size=None, averaged: bool = True) -> dict:
    """Predictions of a run over its validation data (see the module docstring); returns the metrics.
    A run that averaged its weights (`ema`) predicts with the averages unless `averaged=False`."""
    from train.fronts.building import build_loss, build_metrics
    from train.data.loaders import make_loaders
    from train.engine.devices import local_processes, make_accelerator
    from train.base.errors import ConfigError
    from train.fronts.reload import load_model, run_config, working_folder
    from train.engine.targets import loss_shifts_labels
    from train.service.run import Run

    cfg, origin = run_config(run_dir, [f"data.{o}" for o in data_overrides]
                             + ([f"batch_size={batch_size}"] if batch_size else []))
    if cfg.data.val_size == 0:
        cfg.data.val_size = None  # the run may have trained without validation: predict on all of it
    accelerator = make_accelerator(cfg.mixed_precision)
    with working_folder(origin.get("cwd")):
        loaders = make_loaders(cfg, accelerator.device, local_processes(accelerator), seed=cfg.seed)
    if loaders.val is None:
        raise ConfigError("the run's data has no validation split to predict on; name one with --data "
                          "(e.g. val_split=test)")
    model = load_model(run_dir, checkpoint, averaged)
    shifted = loss_shifts_labels(model)
    run = Run(model, None, build_loss(cfg.loss, cfg.loss_args), build_metrics(cfg.metrics), accelerator=accelerator)
    metrics = run.evaluate(loaders.val)
    outputs, targets = run.predict(loaders.val, with_targets=True)
    path = Path(out) if out else Path(run_dir) / "predictions.csv"
    if accelerator.is_main_process:
        write_rows(path, outputs, targets, shifted)
        Path(f"{path}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {path} ({len(outputs)} rows) and {path}.metrics.json: "
              + ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()), flush=True)
    accelerator.wait_for_everyone()
    run.close()
    return metrics


def write_rows(path: Path, outputs, targets, shifted: bool = False) -> None:
    """One row per sample: `index, target, prediction, output_0, ...`; for outputs per token (a list
    of per-sample tensors of their own lengths) `index, length, target, prediction`: the target
    tokens (those not -100) and the arg-max predicted for each, as space-separated ids, position by
    position, `length` of them. `shifted`: the model predicts the next token (a causal language
    model, whose loss shifts the labels), so the output at position t is matched with the target
    at t + 1."""
    import csv
    import io

    from train.base.files import atomic_write_text
    from train.engine.targets import IGNORE_INDEX

    text = io.StringIO()
    writer = csv.writer(text)
    if isinstance(outputs, list):
        writer.writerow(["index", "length", "target", "prediction"])
        for i, (out, target) in enumerate(zip(outputs, targets)):
            predicted = out.argmax(dim=-1) if out.dim() > 1 else out
            target = target.reshape(-1)
            if shifted:
                predicted, target = predicted[:-1], target[1:]
            if len(predicted) == len(target):
                keep = target != IGNORE_INDEX
                predicted, target = predicted[keep], target[keep]
            else:  # outputs not one per target position: both as they are
                target = target[target != IGNORE_INDEX]
            writer.writerow([i, len(target), " ".join(map(str, target.tolist())),
                             " ".join(map(str, predicted.tolist()))])
        atomic_write_text(path, text.getvalue())
        return
    flat = outputs.reshape(len(outputs), -1).float()
    classifier = outputs.dim() == 2 and outputs.shape[1] > 1
    predicted = outputs.argmax(dim=1) if classifier else flat[:, 0]
    target = targets.reshape(len(targets), -1)[:, 0] if targets.dim() > 1 else targets
    writer.writerow(["index", "target", "prediction", *(f"output_{i}" for i in range(flat.shape[1]))])
    for i in range(len(flat)):
        writer.writerow([i, target[i].item(), predicted[i].item(), *(repr(v) for v in flat[i].tolist())])
    atomic_write_text(path, text.getvalue())


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        predict(args.run_dir, args.data, args.checkpoint, args.out, args.batch_size, averaged=not args.raw)
    except RunError as e:
        return ended_by(e)
    return 0
