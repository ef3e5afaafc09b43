"""A search's study: Optuna's journal file storage in the search's folder, its sampler and pruner.

Shared by the search (`train.tuning.search`, which asks for trials and tells their ends) and by the trials'
runs (`train.tuning.pruning`, which reports each epoch and asks whether to stop). The journal file is
appended to under a lock, so that several workers (array tasks on a shared file system, `--workers`)
use one study.
"""

from __future__ import annotations

from pathlib import Path

STUDY_NAME = "sweep"
JOURNAL = "study.journal"


def storage(folder):
    """The study's storage in `folder` (created on first use)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(Path(folder) / JOURNAL)
    # the open(O_EXCL) lock works where flock is not shared between hosts (NFS)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def pruner(name: str, args: dict):
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(**args)


def sampler(name: str, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def load(folder, pruner_name: str = "none", pruner_args: dict | None = None, direction: str | None = None,
         sampler_obj=None):
    """The study in `folder`; created (with `direction`) when `direction` is given and there is none."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search says what happens, in its own lines
    kwargs = dict(study_name=STUDY_NAME, storage=storage(folder), pruner=pruner(pruner_name, pruner_args or {}),
                  sampler=sampler_obj)
    if direction is not None and STUDY_NAME not in optuna.get_all_study_names(kwargs["storage"]):
        # created only when missing: create_study(load_if_exists=True) appends to the journal on every run
        return optuna.create_study(direction="maximize" if direction == "max" else "minimize", **kwargs)
    return optuna.load_study(**kwargs)
