"""One trial of a search: the command that runs it (the config, the trial's values, its folder,
the pruning callback), its process under a launch wrapper, and how its end is told to the study
(complete with its best epoch's value, pruned, failed, or stopped to be continued)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train.base.errors import ConfigError
from train.config.monitor import Monitor
from train.tuning.pruning import MARKER as PRUNED
from train.tuning.results import history_of, is_nan, short, say

# The trial stopped on a signal (having saved a checkpoint, or before training began): it continues on
# the next run. 75 and 130 are the run's own; 128 + the signal is the supervisor's when the signal came
# before the training processes listened.
STOP_CODES = (75, 130, 128 + signal.SIGTERM, 128 + signal.SIGUSR1, 128 + signal.SIGHUP)


class Trials:
    """Runs trials for a search (`settings`) and tells the study how they ended; `search` is the
    command's stop state (`stopped_by`, `stop`, `stopped_by_code`, `forward_signals`, `pass_on`)."""

    def __init__(self, settings, search):
        self.settings, self.search = settings, search
        self.folder = settings.folder
        self.running: dict[int, subprocess.Popen] = {}

    def command(self, number: int, values: dict, cpus: list[int] | None = None) -> list[str]:
        from train.tuning.space import override

        report_to = {"name": "train.tuning.pruning:ReportToStudy",
                     "args": {"folder": str(self.folder.resolve()), "trial": number, "monitor": self.settings.monitor,
                              "pruner": self.settings.pruner, "pruner_args": self.settings.pruner_args}}
        extra = [override("output_dir", str(self.settings.trial_folder(number))),
                 override("callbacks", [*self.settings.callbacks, report_to]),
                 override("tracking.group", self.settings.tracking.group or self.folder.name),
                 override("tracking.run_name", f"{self.folder.name}/trial-{number:04d}")]
        pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        return [*pin, *self.settings.launch, "--config", self.settings.config, *self.settings.overrides,
                *(override(k, v) for k, v in values.items()), *extra]

    def run_trial(self, number: int, values: dict, adopted: bool, share) -> int:
        """Run one trial to its end in its worker's `share` of the machine (train.tuning.shares); its exit code."""
        folder = self.settings.trial_folder(number)
        shown = " ".join(f"{k}={short(v)}" for k, v in values.items())
        if (folder / PRUNED).exists():
            return 0  # pruned, but its worker died before the study heard of it
        if adopted:
            self.wait_for_earlier_run(folder)
            say(f"trial {number} continues: {shown} ({folder})")
        else:
            say(f"trial {number}: {shown} ({folder})")
        # the trial runs in the search's environment (its interpreter's accelerate, as if activated)
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = dict(os.environ, PATH=path, PYTHONUNBUFFERED="1", TRAIN_STOP_WITH_PARENT=str(os.getpid()), **share.env())
        with open(folder / "trial.log", "a") as log:
            with self.search.guard:
                if self.search.stopped_by:
                    return self.search.stopped_by_code()
                proc = subprocess.Popen(self.command(number, values, share.cpus), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                self.running[number] = proc
            if self.search.stopped_by > 0 and self.search.forward_signals:  # a signal came while it was starting
                self.search.pass_on(proc, self.search.stopped_by)
            code = proc.wait()
        with self.search.guard:
            self.running.pop(number, None)
        return code

    def wait_for_earlier_run(self, folder: Path, timeout: float = 300) -> None:
        """A killed worker's trial may still be saving its checkpoint: wait for its run's lock."""
        from train.base.lock import FolderInUse, OutputLock

        deadline, said = time.monotonic() + timeout, False
        while True:
            lock = OutputLock(folder)
            if not lock.path.exists():
                return
            try:
                lock.acquire()
                lock.release()
                return
            except FolderInUse:
                if time.monotonic() > deadline:
                    return  # the run's own lock check says the rest
                if not said:
                    say(f"waiting for the earlier run in {folder} to end")
                    said = True
                time.sleep(0.5)

    def settle(self, s, number: int, code: int) -> None:
        """Tell the study how the trial ended (a stopped trial stays running, to be continued)."""
        from optuna.trial import TrialState

        folder = self.settings.trial_folder(number)
        if code in STOP_CODES or (code != 0 and self.search.stopped_by > 0):
            say(f"trial {number} stopped (exit {code}): the next run of this search continues it")
            self.search.stop(code if code in STOP_CODES else self.search.stopped_by_code())
            return
        why = last_error(folder / "trial.log") or f"exit {code}"
        if code == 2 and "is in use by" in why:  # the run a killed worker left is still ending
            say(f"trial {number} is still held by an earlier run ({why}); the next run of this search continues it")
            self.search.stop(code)
            return
        if code != 0:
            s.tell(number, state=TrialState.FAIL)
            say(f"trial {number} failed: {why} (see {folder}/trial.log)")
            if code in (2, 74):  # a mistake in the config or a full disk: every trial would fail alike
                self.search.stop(code)
            return
        rows = history_of(folder)
        marker = folder / PRUNED
        if marker.exists():
            try:
                epoch = json.loads(marker.read_text())["epoch"]
            except (OSError, ValueError, KeyError):
                epoch = len(rows)
            s.tell(number, state=TrialState.PRUNED)
            say(f"trial {number} pruned after epoch {epoch} of {self.settings.config_values.epochs}: {self.settings.monitor} "
                f"{short(rows[-1].get(self.settings.monitor)) if rows else '?'}")
            return
        values = [r[self.settings.monitor] for r in rows if self.settings.monitor in r and not is_nan(r[self.settings.monitor])]
        if not values:
            s.tell(number, state=TrialState.FAIL)
            columns = ", ".join(rows[-1]) if rows else "none"
            raise ConfigError(f"trial {number} has no '{self.settings.monitor}' in its history (columns: {columns}); set "
                              f"sweep.monitor to one of them")
        best = Monitor(self.settings.monitor, self.settings.mode).best(values)
        s.tell(number, best)
        say(f"trial {number} done: {self.settings.monitor} {short(best)} ({len(rows)} epochs)")



def last_error(log: Path) -> str:
    """The trial's own one-line reason (`error: ...`), if it gave one."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-60:]
    except OSError:
        return ""
    said = [line.strip() for line in lines if line.startswith("error: ")]
    if said:
        return said[-1][len("error: "):]
    said = [line.strip() for line in lines if line.strip() and not line.startswith(" ")]
    return said[-1] if said else ""
