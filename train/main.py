"""The script front: `accelerate launch train/main.py [--config FILE] [key=value ...]`.

argv -> config -> data, model, optimizer -> (resume from a checkpoint) -> the loop -> `output_dir`
holding `config.yaml`, `history.csv`, `history.png`, `checkpoints/` and `model.safetensors`.
Every way a run can end badly on purpose (bad input, NaN loss, preemption) ends with one line on
stderr and the exit code listed in `train.errors` (the traceback only with `--debug`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not train/*.py as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.build import build_loss, build_optimizer, build_scheduler, optimizer_steps_per_epoch  # noqa: E402
from train.callbacks import EpochTable, HistoryCSV  # noqa: E402
from train.config import describe_keys, load_config, save_config  # noqa: E402
from train.errors import ConfigError, NonFiniteLoss, Preempted, RunError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "mnist.yaml"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="accelerate launch train/main.py",
        description="Train a model with the one Accelerate loop. Overrides are key=value "
                    "(dotted keys, values read as YAML), e.g. epochs=1 optimizer.lr=0.02.",
        epilog="config keys (with their defaults):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/mnist.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


def resolve_paths(cfg) -> None:
    """Relative data paths are taken from the working directory, else from the project root, so
    that the script runs from anywhere."""
    path = Path(cfg.data.path)
    if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
        cfg.data.path = str(ROOT / path)


def prepare_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir '{path}' is not writable ({e.strerror}); set output_dir=DIR") from None


def save_weights(accelerator, model, path: Path) -> None:
    """Final weights as safetensors, written atomically by the main process. Every process takes
    part in collecting the state dict (sharded models gather it)."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        from train.files import atomic_write

        # a compiled model's keys start with `_orig_mod.`: save the plain model's names
        state = {k.removeprefix("_orig_mod."): v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write(path, lambda tmp: save_file(state, tmp))
    accelerator.wait_for_everyone()


class Job:
    """Everything one run is made of, built from the config on every process."""

    def __init__(self, cfg):
        from accelerate.utils import ProjectConfiguration, set_seed

        from train.data import make_loaders
        from train.loop import Loop, make_accelerator
        from train.metrics import metrics_by_name
        from train.models import build_model
        from train import checkpoint
        from train.tracking import start_trackers, tracker_names

        resolve_paths(cfg)
        self.cfg = cfg
        self.output_dir = output_dir = Path(cfg.output_dir)
        metrics = metrics_by_name(cfg.metrics)
        set_tf32(cfg.tf32)
        self.accelerator = accelerator = make_accelerator(
            cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed, log_with=tracker_names(cfg) or None,
            dynamo_backend="inductor" if cfg.compile else None,
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(output_dir / "tensorboard")))
        if accelerator.is_main_process:
            prepare_output_dir(output_dir)
        accelerator.wait_for_everyone()
        set_seed(cfg.seed)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        self.loaders = make_loaders(cfg, accelerator.device, local_processes, seed=cfg.seed)
        if self.loaders.val is not None and len(self.loaders.val.dataset) < accelerator.num_processes:
            raise ConfigError(f"the validation set has {len(self.loaders.val.dataset)} sample(s), fewer than the "
                              f"{accelerator.num_processes} processes; give data.val_size >= "
                              f"{accelerator.num_processes}, or data.val_size=0 for no validation")
        in_channels = self.loaders.train.dataset[0][0].shape[0]
        model = build_model(cfg.model, in_channels=in_channels, num_classes=cfg.data.num_classes)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        self.steps_per_epoch = optimizer_steps_per_epoch(len(self.loaders.train), accelerator.num_processes,
                                                         cfg.gradient_accumulation_steps)
        scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, self.steps_per_epoch)
        self.loop = Loop(model, optimizer, build_loss(cfg.loss), metrics, accelerator=accelerator,
                         scheduler=scheduler, scheduler_interval=cfg.scheduler.interval,
                         max_grad_norm=cfg.max_grad_norm, nonfinite=cfg.nonfinite, channels_last=cfg.channels_last)
        self.columns = history_columns(cfg, metrics, self.loaders.val is not None)
        self.checkpoint = None  # the Checkpoint callback, once callbacks() has made it
        self.resume = None
        if not cfg.preflight:
            path = checkpoint.find(cfg.resume, output_dir)
            if path is not None:
                self.resume = checkpoint.load(self.loop, path)
        run_id = self.resume.tracker_run_id if self.resume else None
        self.trackers, self.run_id = ({}, None) if cfg.preflight else start_trackers(accelerator, cfg, output_dir,
                                                                                      run_id)

    def callbacks(self) -> list:
        from train.callbacks import EarlyStopping, Preemption, SlowDataWarning
        from train.checkpoint import Checkpoint
        from train.plots import HistoryPlot
        from train.progress import progress_for
        from train.tracking import Tracking

        cfg, out = self.cfg, self.output_dir
        callbacks = [progress_for(cfg.progress, cfg.log_every_s), EpochTable(), SlowDataWarning(),
                     HistoryCSV(out / "history.csv"), HistoryPlot(out / "history.png"),
                     *([Tracking()] if self.trackers else []), Preemption()]
        stop = cfg.early_stopping
        if stop.monitor:
            callbacks.append(EarlyStopping(check_column(stop.monitor, self.columns, "early_stopping.monitor"),
                                           stop.mode, stop.patience, stop.min_delta, stop.restore_best))
        if cfg.checkpoint.enabled:
            ck = cfg.checkpoint
            monitor = ck.monitor or ("val_loss" if "val_loss" in self.columns else "loss")
            self.checkpoint = Checkpoint(out / "checkpoints", ck.every_steps, ck.keep_last,
                                         check_column(monitor, self.columns, "checkpoint.monitor"), ck.mode,
                                         tracker_run_id=self.run_id)
            callbacks.append(self.checkpoint)  # last: it saves what the others have updated
        return callbacks

    def close(self) -> None:
        self.loop.close()


def set_tf32(on) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions (NVIDIA Ampere and later): ~10 bits of
    mantissa instead of 23, several times the speed. None leaves torch's defaults (matmul off,
    convolutions on)."""
    if on is not None:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def history_columns(cfg, metrics, has_validation: bool) -> list[str]:
    names = ["loss", *metrics]
    return [*names, *(["val_" + n for n in names] if has_validation else []), "lr"]


def check_column(column: str, columns: list[str], key: str) -> str:
    if column not in columns:
        import difflib

        close = difflib.get_close_matches(column, columns, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(columns)}"
        raise ConfigError(f"config key '{key}' is '{column}', which is not a history column; {hint}")
    return column


def run(cfg):
    """Train as `cfg` says, continuing from a checkpoint when `cfg.resume` finds one; returns the
    history DataFrame (the same on every process)."""
    output_dir = Path(cfg.output_dir)
    new_dir = not output_dir.exists()
    try:
        job = Job(cfg)
    except RunError:
        if new_dir and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a run that never started leaves nothing behind
        raise
    accelerator = job.accelerator
    try:
        if cfg.preflight:
            from train.preflight import preflight

            return preflight(job)
        callbacks = job.callbacks()
        epochs = cfg.epochs
        if job.resume is not None:
            from train.checkpoint import apply

            apply(job.loop, job.resume, callbacks)
            epochs = max(0, cfg.epochs - len(job.resume.history))
        if accelerator.is_main_process:
            save_config(cfg, output_dir / "config.yaml")
            print_plan(job)
        history = job.loop.fit(epochs, job.loaders.train, job.loaders.val, callbacks, cfg.log_step_freq)
        save_weights(accelerator, job.loop.model, output_dir / "model.safetensors")
        if accelerator.is_main_process:
            print(f"wrote {output_dir}/: history.csv, history.png, model.safetensors, config.yaml"
                  + (", checkpoints/" if job.checkpoint else ""), flush=True)
        return history
    except (NonFiniteLoss, Preempted) as e:
        raise type(e)(f"{e}; {where_to_resume(job, isinstance(e, Preempted))}") from None
    finally:
        job.close()


def where_to_resume(job, preempted: bool) -> str:
    from train.checkpoint import latest as latest_checkpoint

    if job.checkpoint is None:
        return "no checkpoint (checkpoint.enabled=false)"
    latest = latest_checkpoint(job.checkpoint.root)
    if latest is None:
        return "no checkpoint was saved yet"
    if preempted:
        return f"checkpoint {latest} saved; run the same command again to resume"
    return f"the last good checkpoint is {latest} (latest)"


def print_plan(job) -> None:
    """What will happen, said once before training."""
    cfg, accelerator = job.cfg, job.accelerator
    world = accelerator.num_processes
    accumulation = cfg.gradient_accumulation_steps
    print(f"plan: {cfg.model} on {accelerator.device} x {world} process(es) "
          f"({accelerator.distributed_type.value}), precision {accelerator.mixed_precision}", flush=True)
    print(f"  batch {cfg.batch_size} per process x {world} x accumulation {accumulation} = global batch "
          f"{cfg.batch_size * world * accumulation}; {job.steps_per_epoch} optimizer steps per epoch; "
          f"{cfg.epochs} epoch(s)", flush=True)
    for note in job.loaders.notes:
        print(f"  data: {note}", flush=True)
    if job.resume is not None:
        pos, left = job.resume.position, cfg.epochs - len(job.resume.history)
        batches = -(-len(job.loaders.train) // accelerator.num_processes)  # per process
        where = (f"epoch {pos.epoch}, batch {pos.step_in_epoch} of {batches}" if pos.step_in_epoch
                 else f"the end of epoch {pos.epoch - 1}")
        then = f"training to epoch {cfg.epochs}" if left > 0 else f"all {cfg.epochs} epoch(s) done, nothing to train"
        print(f"  resuming from {job.resume.path} ({where}, global step {pos.global_step}); {then}", flush=True)
    if job.checkpoint is not None:
        every = f"every {cfg.checkpoint.every_steps} batches and " if cfg.checkpoint.every_steps else ""
        print(f"  checkpoints: {every}at each epoch end to {job.checkpoint.root}/ (keep {cfg.checkpoint.keep_last} "
              f"+ best by {job.checkpoint.monitor}); SIGUSR1/SIGTERM save one and exit 75", flush=True)
    print(f"  outputs: {cfg.output_dir}/ (config.yaml, history.csv, history.png, model.safetensors)", flush=True)
    for name, where in job.trackers.items():
        print(f"  tracking: {name} -> {where}", flush=True)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(load_config(args.config, args.overrides))
    except RunError as e:
        if args.debug:
            raise
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0 or not e.same_on_every_process:
            who = f"[rank {rank}] " if rank else ""
            label = "preempted" if isinstance(e, Preempted) else "error"
            print(f"{who}{label}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
