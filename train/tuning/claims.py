"""Workers taking trials from one study: a worker asks for a trial, or adopts one a dead worker
left, under a claim lock that holds across threads, processes and hosts (a file made with O_EXCL,
which holds on NFS where flock may not), and holds the trial's `.owner` lock while it runs, so that
no trial runs twice and a stopped trial goes back to its own worker first."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

from train.base.errors import ConfigError, RunError, UserError
from train.tuning.results import shown
from train.tuning.settings import KEYS, SearchSettings

OWNER_LOCK = ".owner"
ORPHAN_GRACE_S = 120.0  # another worker's stopped trial waits this long for its own worker to come back
WAIT = "wait"  # claim(): nothing to start now, but a stopped trial may need this worker soon
CLAIM_GRACE_S = 60  # a claim lock older than this was left by a killed worker


class Claims:
    """The study and who runs which trial, for the workers of this command (threads) and of others."""

    def __init__(self, settings: SearchSettings, stopped):
        self.settings = settings
        self.folder = settings.folder
        self.stopped = stopped  # () -> whether the search is stopping: no new trials
        self.guard = threading.RLock()  # held around the file lock; a stop may come inside it

    def trial_folder(self, number: int):
        return self.settings.trial_folder(number)

    @contextmanager
    def exclusive(self):
        """One worker at a time counts, asks, adopts and tells (threads here; processes and hosts
        elsewhere, through a file created with O_EXCL, which holds on NFS where flock may not)."""
        from optuna.storages.journal import JournalFileOpenLock

        with self.guard:
            lock = JournalFileOpenLock(str(self.folder / "claim"), grace_period=CLAIM_GRACE_S)
            lock.acquire()
            try:
                yield
            finally:
                lock.release()

    def open_study(self):
        from train.tuning import study

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "study.journal").touch()
        except OSError as e:
            raise UserError(f"the search folder {self.folder} cannot be written ({e.strerror}); give --dir a "
                            f"folder you can write") from None
        with self.exclusive():
            s = study.load(self.folder, self.settings.pruner, self.settings.pruner_args, self.settings.mode)
            mine = json.loads(json.dumps(self.settings.settings()))
            theirs = s.user_attrs.get("settings")
            if theirs is None:
                s.set_user_attr("settings", mine)
                baseline = self.settings.baseline_values()
                if baseline:
                    s.enqueue_trial(baseline)
            elif theirs != mine:
                different = [f"{k}: {shown(theirs.get(k))} there, {shown(mine.get(k))} now" for k in KEYS
                             if theirs.get(k) != mine.get(k)]
                raise ConfigError(f"{self.folder} holds a search with other settings ({'; '.join(different)}); run "
                                  f"its command to continue it (--trials may grow), or give another --dir")
        return s

    def claim(self, s):
        """The next trial for this worker: a dead worker's unfinished trial, else a new one while
        fewer than N are done or running. Returns (number, values, owner lock) or None."""
        from optuna.trial import TrialState

        from train.base.lock import FolderInUse, OutputLock

        keys = {d.key for d in self.settings.dimensions}
        with self.exclusive():
            trials = s.get_trials(deepcopy=False)
            waiting = 0  # stopped trials left to their own workers for now
            for t in trials:
                if t.state != TrialState.RUNNING:
                    continue
                owner = OutputLock(self.trial_folder(t.number), OWNER_LOCK)
                try:
                    owner.acquire()
                except FolderInUse:
                    continue  # a live worker runs it
                if set(t.params) != keys:  # its worker died between asking and drawing: draw anew
                    owner.release()
                    s.tell(t.number, state=TrialState.FAIL)
                    continue
                if not self.may_adopt(t.number):
                    owner.release()
                    waiting += 1
                    continue
                (self.trial_folder(t.number) / "worker").write_text(self.worker_id)
                return t.number, dict(t.params), owner, True
            trials = s.get_trials(deepcopy=False)
            done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            failed = sum(t.state == TrialState.FAIL for t in trials)
            if self.stopped():
                return None
            if done + running >= self.settings.trials:
                return WAIT if waiting else None
            if failed >= max(3, self.settings.trials):
                raise RunError(f"{failed} trials failed (see their trial.log in {self.folder}); the search stops")
            from train.tuning import study

            s.sampler = study.sampler(self.settings.sampler_name, self.settings.seed + len(trials))  # the same search, the same trials
            trial = s.ask()
            values = {d.key: d.suggest(trial) for d in self.settings.dimensions}
            owner = OutputLock(self.trial_folder(trial.number), OWNER_LOCK)
            owner.acquire()
            (self.trial_folder(trial.number) / "worker").write_text(self.worker_id)
            return trial.number, values, owner, False

    @property
    def worker_id(self) -> str:
        """Who runs a trial: a SLURM array task keeps its id across a requeue; elsewhere the host."""
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"slurm job {job}" + (f" task {task}" if task else "")
        import socket

        return socket.gethostname()

    def may_adopt(self, number: int) -> bool:
        """A stopped trial goes back to its own worker (a requeued array task); another worker takes it
        once it has lain still for ORPHAN_GRACE_S (its worker is not coming back soon)."""
        folder = self.trial_folder(number)
        try:
            if (folder / "worker").read_text() == self.worker_id:
                return True
            last = max(p.stat().st_mtime for p in (folder / "worker", folder / "trial.log") if p.exists())
        except (OSError, ValueError):
            return True  # no worker ever started it
        return time.time() - last > ORPHAN_GRACE_S

