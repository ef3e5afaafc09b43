"""The script front: `accelerate launch train/main.py [--config FILE] [key=value ...]`.

argv -> config -> `train.fronts.from_config.build_run` (data, model, optimizer, `Run`) -> `Run.fit` -> `output_dir`
holding `config.yaml`, `history.csv`, `history.png`, `checkpoints/` and `model.safetensors`.
Every way a run can end badly on purpose (bad input, NaN loss, a full disk, preemption, Ctrl-C)
ends with one line on stderr and the exit code listed in `train.base.errors` (a traceback only with
`--debug`).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap


from train.config.loading import load_config  # noqa: E402
from train.base.errors import RunError  # noqa: E402
from train.base.paths import DEFAULT_CONFIG, ROOT  # noqa: F401 (ROOT: for the tests)



def help_listing(argv) -> str:
    """The keys with the values the given --config and overrides would run with (`--help` only)."""
    from train.config.loading import describe_keys

    config, overrides = str(DEFAULT_CONFIG), []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-") and (i == 0 or argv[i - 1] != "--config"):
            overrides.append(arg)
    try:
        return f"config keys, with the values of {config} and the overrides given:\n" + \
            describe_keys(load_config(config, overrides))
    except RunError as e:
        return f"config keys, with their defaults ({e}):\n" + describe_keys()


OPTIONS = ("--config", "--debug", "-h", "--help")


def settings_given_as_flags(argv) -> None:
    """`--epochs 2` (the usual form of other tools) is one line that shows this tool's form
    (`epochs=2`), exit 2, instead of argparse's usage block."""
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if not arg.startswith("-") or name in OPTIONS or arg == "--":
            continue
        if name.startswith("--") and len(name) > 3 and any(o.startswith(name) for o in OPTIONS):
            continue  # argparse's abbreviation of an option (--conf, --deb)
        key = name.lstrip("-").replace("-", "_")
        from train.config.loading import all_keys

        known = all_keys()
        if key not in known:  # `--lr`: the key it most likely means (`optimizer.lr`)
            key = next((k for k in known if k.endswith("." + key)), key)
        if "=" in arg:
            value = arg.split("=", 1)[1]
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
            value = argv[i + 1]
        else:
            value = "VALUE"
        print(f"error: {arg} is not an option of train/main.py: settings are key=value, e.g. {key}={value} "
              f"(python train/main.py --help lists the keys)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def parse_args(argv):
    wants_help = any(a in ("-h", "--help") for a in argv)
    settings_given_as_flags(argv)
    parser = argparse.ArgumentParser(
        prog="train/main.py",
        description=textwrap.fill(
            "Train a model with the one Accelerate loop. Overrides are key=value (dotted keys, values "
            "read as YAML), e.g. epochs=1 optimizer.lr=0.02 model_args.hidden=64. Models, losses, "
            "metrics, optimizers, schedules and data factories are built-in names or import paths "
            "'package.module:Name'; the project folder and the current folder are importable.", 100),
        epilog=help_listing(argv) if wants_help else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/mnist.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_intermixed_args(argv)  # overrides before and after --config


def train_from(cfg):
    """Train as `cfg` says (or run the preflight), continuing from a checkpoint when `cfg.resume`
    finds one; returns the `History` (the same on every process)."""
    from train.fronts.from_config import build_run

    run, loaders = build_run(cfg)
    try:
        if cfg.preflight:
            from train.service.preflight import preflight

            return preflight(run, loaders)
        return run.fit(cfg.epochs, loaders.train, loaders.val)
    finally:
        run.close()


def main(argv=None) -> int:
    from train.supervision.reports import ended_by, record_exit

    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as usage:  # argparse said what was wrong; a supervisor must not retry it
        if usage.code:
            record_exit(usage.code, "usage error", final=True)
        raise
    from train.callbacks.plots import start_helper

    # history.png's drawing process imports matplotlib while this one imports torch (forked, with
    # both imported, in a process forked from the supervisor's warm template)
    start_helper(fork=True)
    try:
        train_from(load_config(args.config, args.overrides))
    except RunError as e:
        if args.debug:
            record_exit(e.exit_code, str(e), final=True)  # raised on purpose: a restart would not help
            raise
        return ended_by(e)
    return 0


def run_as_script() -> None:
    """`python train/main.py` / `accelerate launch train/main.py`: `main()`, then the exit."""
    try:
        code = main()
    except SystemExit as stop:  # preempted (75) or interrupted (130): the run said why
        code = stop.code if isinstance(stop.code, int) else 1
    # Everything is written, fsynced and closed, and the helpers have ended: leave without the
    # interpreter's teardown of torch's modules, which takes about a second here. Not while loader
    # worker processes live: the teardown is what stops them (else they would hold our stdout open
    # until they notice they are orphans). A crash does not come here: its traceback is Python's.
    import multiprocessing

    from train.supervision.reports import record_ended

    record_ended(code)  # a preflight or `--help` records nothing else
    from train.callbacks.plots import stop_helper

    stop_helper()  # os._exit runs no atexit
    if multiprocessing.active_children():
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
