"""The script front: `accelerate launch train/main.py [--config FILE] [key=value ...]`.

argv -> config -> data, model, optimizer -> the loop -> `output_dir` holding `config.yaml`,
`history.csv` and `model.safetensors`. A user mistake ends with one line on stderr and exit code
2 (the traceback only with `--debug`).
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
from train.errors import ConfigError, UserError  # noqa: E402

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

        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
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
        from train.tracking import start_trackers, tracker_names

        resolve_paths(cfg)
        self.cfg = cfg
        self.output_dir = output_dir = Path(cfg.output_dir)
        metrics = metrics_by_name(cfg.metrics)
        self.accelerator = accelerator = make_accelerator(
            cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed, log_with=tracker_names(cfg) or None,
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(output_dir / "tensorboard")))
        if accelerator.is_main_process:
            prepare_output_dir(output_dir)
        accelerator.wait_for_everyone()
        set_seed(cfg.seed)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        self.loaders = make_loaders(cfg, accelerator.device, local_processes, seed=cfg.seed)
        in_channels = self.loaders.train.dataset[0][0].shape[0]
        model = build_model(cfg.model, in_channels=in_channels, num_classes=cfg.data.num_classes)
        optimizer = build_optimizer(cfg.optimizer, model.parameters())
        self.steps_per_epoch = optimizer_steps_per_epoch(len(self.loaders.train), accelerator.num_processes,
                                                         cfg.gradient_accumulation_steps)
        scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, self.steps_per_epoch)
        self.loop = Loop(model, optimizer, build_loss(cfg.loss), metrics, accelerator=accelerator,
                         scheduler=scheduler, scheduler_interval=cfg.scheduler.interval,
                         max_grad_norm=cfg.max_grad_norm)
        self.trackers = {} if cfg.preflight else start_trackers(accelerator, cfg, output_dir)

    def callbacks(self) -> list:
        from train.callbacks import SlowDataWarning
        from train.plots import HistoryPlot
        from train.progress import progress_for
        from train.tracking import Tracking

        out = self.output_dir
        return [progress_for(self.cfg.progress, self.cfg.log_every_s), EpochTable(), SlowDataWarning(),
                HistoryCSV(out / "history.csv"), HistoryPlot(out / "history.png"),
                *([Tracking()] if self.trackers else [])]

    def close(self) -> None:
        self.loop.close()


def run(cfg):
    """Train as `cfg` says; returns the history DataFrame (the same on every process)."""
    job = Job(cfg)
    accelerator, output_dir = job.accelerator, job.output_dir
    if cfg.preflight:
        from train.preflight import preflight

        try:
            return preflight(job)
        finally:
            job.close()
    if accelerator.is_main_process:
        save_config(cfg, output_dir / "config.yaml")
        print_plan(job)
    history = job.loop.fit(cfg.epochs, job.loaders.train, job.loaders.val, job.callbacks(), cfg.log_step_freq)
    save_weights(accelerator, job.loop.model, output_dir / "model.safetensors")
    if accelerator.is_main_process:
        print(f"wrote {output_dir}/: history.csv, history.png, model.safetensors, config.yaml", flush=True)
    job.close()
    return history


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
    print(f"  outputs: {cfg.output_dir}/ (config.yaml, history.csv, history.png, model.safetensors)", flush=True)
    for name, where in job.trackers.items():
        print(f"  tracking: {name} -> {where}", flush=True)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(load_config(args.config, args.overrides))
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
