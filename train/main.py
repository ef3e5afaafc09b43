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


def run(cfg):
    """Train as `cfg` says; returns the history DataFrame (the same on every process)."""
    from accelerate.utils import set_seed

    from train.data import make_loaders
    from train.loop import Loop, make_accelerator
    from train.metrics import metrics_by_name
    from train.models import build_model

    resolve_paths(cfg)
    output_dir = Path(cfg.output_dir)
    metrics = metrics_by_name(cfg.metrics)
    accelerator = make_accelerator(cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir)
    set_seed(cfg.seed)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    loaders = make_loaders(cfg, accelerator.device, local_processes, seed=cfg.seed)
    in_channels = loaders.train.dataset[0][0].shape[0]
    model = build_model(cfg.model, in_channels=in_channels, num_classes=cfg.data.num_classes)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps = optimizer_steps_per_epoch(len(loaders.train), accelerator.num_processes,
                                      cfg.gradient_accumulation_steps)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, steps)
    if accelerator.is_main_process:
        save_config(cfg, output_dir / "config.yaml")
        print_plan(cfg, accelerator, loaders, steps)
    loop = Loop(model, optimizer, build_loss(cfg.loss), metrics, accelerator=accelerator, scheduler=scheduler,
                scheduler_interval=cfg.scheduler.interval, max_grad_norm=cfg.max_grad_norm,
                callbacks=[EpochTable(), HistoryCSV(output_dir / "history.csv")])
    history = loop.fit(cfg.epochs, loaders.train, loaders.val)
    save_weights(accelerator, loop.model, output_dir / "model.safetensors")
    if accelerator.is_main_process:
        print(f"wrote {output_dir}/history.csv, model.safetensors, config.yaml", flush=True)
    loop.close()
    return history


def print_plan(cfg, accelerator, loaders, steps_per_epoch: int) -> None:
    """What will happen, said once before training."""
    world = accelerator.num_processes
    accumulation = cfg.gradient_accumulation_steps
    print(f"plan: {cfg.model} on {accelerator.device} x {world} process(es) "
          f"({accelerator.distributed_type.value}), precision {accelerator.mixed_precision}", flush=True)
    print(f"  batch {cfg.batch_size} per process x {world} x accumulation {accumulation} = global batch "
          f"{cfg.batch_size * world * accumulation}; {steps_per_epoch} optimizer steps per epoch; "
          f"{cfg.epochs} epoch(s)", flush=True)
    for note in loaders.notes:
        print(f"  data: {note}", flush=True)
    print(f"  outputs: {cfg.output_dir}/", flush=True)


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
