"""A search's settings: what the command and the config say (the config, the space, the number of
trials, the objective, the sampler and its seed, the pruner, the folder, the workers, the launch
wrapper), checked before any trial, and what makes a search this search (a second command on the
same folder must agree)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from train.base.errors import ConfigError
from train.base.paths import ROOT
from train.config.monitor import mode_of

KEYS = ("config", "overrides", "space", "monitor", "mode", "sampler", "seed", "pruner", "pruner_args")


def objective_of(cfg) -> tuple[str, str]:
    """The history column the search optimises and whether higher or lower is better."""
    s = cfg.sweep
    if s.monitor:
        return s.monitor, mode_of(s.monitor, s.mode)
    for monitor, mode in ((cfg.early_stopping.monitor, cfg.early_stopping.mode),
                          (cfg.checkpoint.monitor, cfg.checkpoint.mode)):
        if monitor:
            return monitor, mode if s.mode == "auto" else s.mode
    monitor = "val_loss" if cfg.data.val_size != 0 else "loss"
    return monitor, mode_of(monitor, s.mode)


class SearchSettings:
    """The settings of one search (see the module docstring); each mistake is one `ConfigError`."""

    def __init__(self, args):
        import yaml

        from train.config.loading import load_config
        from train.tuning.space import check_keys, parse_space

        self.config, self.overrides = args.config, list(args.overrides)
        cfg = load_config(self.config, self.overrides)
        space, where = cfg.sweep.space, "sweep.space"
        if args.space:
            where = args.space
            try:
                space = yaml.safe_load(Path(args.space).read_text())
            except OSError as e:
                raise ConfigError(f"search space '{args.space}' cannot be read ({e.strerror}); pass an existing "
                                  f"YAML file with --space") from None
            except yaml.YAMLError as e:
                raise ConfigError(f"search space '{args.space}' is not valid YAML ({e.__class__.__name__})") from None
        self.dimensions = parse_space(space, where)
        check_keys(self.dimensions, self.config, self.overrides, where)
        self.trials = cfg.sweep.trials if args.trials is None else args.trials
        if self.trials <= 0:
            raise ConfigError(f"--trials must be > 0, got {self.trials}")
        self.monitor, self.mode = objective_of(cfg)
        s = cfg.sweep
        self.sampler_name, self.seed = s.sampler, s.seed if s.seed is not None else cfg.seed
        self.pruner, self.pruner_args, self.baseline = s.pruner, dict(s.pruner_args), s.baseline
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"sweep.seed must be in [0, 2**31), got {self.seed}")
        from train.tuning import study

        try:  # a typo in sweep.pruner_args is the user's, and says so here, not in every trial
            study.pruner(self.pruner, self.pruner_args)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sweep.pruner_args {self.pruner_args} do not suit optuna's MedianPruner ({e}); it "
                              f"takes n_startup_trials, n_warmup_steps, interval_steps, n_min_trials") from None
        self.folder = Path(args.dir or s.dir or f"{cfg.output_dir}-sweep")
        self.workers = args.workers
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        wrapper = Path(args.launch)
        if not wrapper.is_file() and not wrapper.is_absolute() and (ROOT / wrapper).is_file():
            wrapper = ROOT / wrapper  # launch/cpu2.sh from another folder
        self.launch = [str(wrapper)]
        if not wrapper.is_file():
            raise ConfigError(f"--launch {args.launch}: no such wrapper; give launch/one.sh, launch/cpu2.sh, "
                              f"launch/gpus.sh or slurm/step.sh")
        if wrapper.name == "step.sh" and self.workers > 1:
            raise ConfigError("--workers must be 1 inside a SLURM job (each trial takes the whole allocation); run "
                              "more workers as array tasks: sbatch --array=0-3 slurm/train.sh --sweep ...")
        self.callbacks, self.tracking = cfg.callbacks, cfg.tracking
        self.config_values = cfg

    def settings(self) -> dict:
        """What makes a search this search: a second command on the same folder must agree."""
        skip = ("sweep.trials=", "sweep.dir=")
        return {"config": str(Path(self.config).resolve()), "overrides": [o for o in self.overrides
                                                                       if not o.startswith(skip)],
                "space": [d.describe() for d in self.dimensions],
                "monitor": self.monitor, "mode": self.mode, "sampler": self.sampler_name, "seed": self.seed,
                "pruner": self.pruner, "pruner_args": self.pruner_args}

    def baseline_values(self) -> dict:
        """The config's own values, when the space holds every one of them."""
        if not self.baseline:
            return {}
        from train.config.loading import all_keys

        keys = {k: v["value"] for k, v in all_keys(values=self.config_values).items()}
        values = {}
        for d in self.dimensions:
            if d.key in keys:
                value = keys[d.key]
            else:  # model_args.hidden: an entry of a dict key
                parent = next((p for p in keys if isinstance(keys[p], dict) and d.key.startswith(p + ".")), None)
                value = keys[parent].get(d.key[len(parent) + 1:]) if parent else None
            if value is None or not d.holds(value):
                return {}
            values[d.key] = value
        return values

    def trial_folder(self, number: int) -> Path:
        return self.folder / f"trial-{number:04d}"

    def retrain_command(self, values: dict) -> str:
        from train.tuning.space import override

        wrapper = os.path.relpath(self.launch[0]) if Path(self.launch[0]).is_absolute() else self.launch[0]
        if Path(wrapper).name == "step.sh":
            wrapper = "sbatch slurm/train.sh"
        kept = [o for o in self.overrides if not o.startswith("sweep.")]
        return shlex.join([*wrapper.split(), "--config", self.config, *kept,
                           *(override(k, v) for k, v in values.items()),
                           override("output_dir", f"{self.folder}/best")])

