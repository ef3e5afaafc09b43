"""A PyTorch training loop on Hugging Face Accelerate, with three fronts over one loop:
the script (`accelerate launch train/main.py`), functions (`train_step`, `valid_step`,
`train_model`) and a Keras-like class (`Model`), all driving one `Run`.

The package is layered, each layer a subpackage that imports only those below it (checked by
import-linter, `make test-fast`): `base` (errors, files, text), `supervision` (the process above the
launcher; never torch), `config` (the schema, loading, names, run options), `data` (sources,
loaders, batches), `engine` (the loop, evaluation, metrics, devices, events), `callbacks` and
`saving` (what prints and writes; the checkpoint manager, storage, export), `service` (`Run`),
`fronts` (the script, the class, the functions, building from a config) and `tuning` (searches,
the LR finder). The names below are imported on first use, so that `import train` of a light part
(the supervisor, the plot worker, the config) does not pay for torch.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

if os.environ.get("TRAIN_SUPERVISOR_DIR"):  # under launch/*.sh: tell the supervisor this process lives
    from train.supervision.reports import watch_process

    watch_process()

_NAMES = {
    "Model": "fronts.keras", "Run": "service.run", "RunOptions": "config.options", "Loop": "engine.loop",
    "make_accelerator": "engine.devices", "train_step": "fronts.functions", "valid_step": "fronts.functions",
    "train_model": "fronts.functions", "summary": "fronts.summary", "Config": "config.schema",
    "load_config": "config.loading", "UserError": "base.errors", "ConfigError": "base.errors",
    "DataError": "base.errors", "load_model": "fronts.reload", "load_weights": "saving.export",
    "Callback": "engine.events", "RunView": "engine.events",
}
# Modules as they were named before the package had layers: configs, scripts and saved search trials
# may name them (`train.pruning:ReportToStudy`, `train.batches:PadCollate`), so they stay importable.
MOVED = {
    "train.metrics": "train.engine.metrics", "train.batches": "train.data.batches", "train.models": "train.fronts.models",
    "train.pruning": "train.tuning.pruning", "train.draws": "train.data.sample_draws",
    "train.streams": "train.data.streams", "train.targets": "train.engine.targets", "train.api": "train.fronts.keras",
    "train.functional": "train.fronts.functions", "train.run": "train.service.run", "train.loop": "train.engine.loop",
    "train.options": "train.config.options", "train.configfile": "train.config.loading",
    "train.export": "train.saving.export", "train.errors": "train.base.errors",
    "train.grouping": "train.data.grouping",
}
__all__ = [*_NAMES, "seed_everything", "print", "on_main_process"]


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import train.metrics` gives the module `train.engine.metrics` itself (one module object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f"train.{_NAMES[name]}"), name)
    if f"train.{name}" in MOVED:
        return importlib.import_module(MOVED[f"train.{name}"])
    try:  # train.data, train.engine, ...: the subpackages
        return importlib.import_module(f"train.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise  # a module that exists but cannot import what it needs
        raise AttributeError(f"module 'train' has no attribute '{name}'") from None


def print(*args, **kwargs) -> None:
    """`print` once per job: on the main process only (see `train.engine.events.print_once`)."""
    from train.engine.events import print_once

    print_once(*args, **kwargs)


def on_main_process(cls):
    """Class decorator: the callback runs on the main process only (`main_process_only = True`)."""
    cls.main_process_only = True
    return cls


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device): call it before building a model for the same
    initial weights on every run. `fit(seed=...)` seeds the training itself (data order, dropout)."""
    from accelerate.utils import set_seed

    set_seed(seed)
