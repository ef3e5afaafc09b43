"""Hyperparameter search over real runs:

    python -m train.sweep --config CONFIG --space SPACE.yaml --trials N [--dir DIR] [--workers W]
                          [--launch WRAPPER] [key=value ...]

Optuna proposes each trial's values (its seeded TPE sampler by default); each trial is a real run of
the config with those values as overrides, in `DIR/trial-NNNN/`, started through a launch wrapper
(`launch/one.sh` by default; `launch/cpu2.sh`, `launch/gpus.sh`, or `slurm/step.sh` inside an sbatch
job) with its supervisor, restarts and exit codes. Each epoch's monitor goes to the study and its
pruner (median by default) may stop a trial at an epoch end (`train.pruning`).

The study is Optuna's journal file in DIR, so the search survives anything: run the same command
again and the finished trials are kept, an interrupted trial continues from its checkpoint with the
same values, and the search goes on to N trials. Every worker (a second command on the same DIR,
`--workers`, the tasks of a SLURM array) takes trials from the same study: asking for a trial
happens under a file lock, and a worker holds its trial's `.owner` lock while it runs, so no trial
runs twice and a dead worker's trial is taken over by the next worker that looks.

Results: `DIR/trials.csv`, `DIR/sweep.png`, and a summary with the best values and the command that
retrains them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from train.supervision.reports import ended_by
from train.config.monitor import Monitor, mode_of
from train.base.errors import ConfigError, RunError, UserError, report
from train.base.paths import ROOT

OWNER_LOCK = ".owner"
ORPHAN_GRACE_S = 120.0  # another worker's stopped trial waits this long for its own worker to come back
# The trial stopped on a signal (having saved a checkpoint, or before training began): it continues on
# the next run. 75 and 130 are the run's own; 128 + the signal is the supervisor's when the signal came
# before the training processes listened.
STOP_CODES = (75, 130, 128 + signal.SIGTERM, 128 + signal.SIGUSR1, 128 + signal.SIGHUP)
WAIT = "wait"  # claim(): nothing to start now, but a stopped trial may need this worker soon
CLAIM_GRACE_S = 60  # a claim lock older than this was left by a killed worker
SETTINGS = ("config", "overrides", "space", "monitor", "mode", "sampler", "seed", "pruner", "pruner_args")


def say(text: str) -> None:
    import textwrap

    print(textwrap.fill(text, 100, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False),
          flush=True)


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


class Search:
    """One worker of a search (with `workers` trials at a time)."""

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
        self.forward_signals = os.environ.get("SWEEP_FORWARD_SIGNALS", "1") != "0"
        self.stopped_by = 0
        self.stop_code = 0
        self.running: dict[int, subprocess.Popen] = {}
        self.guard = threading.RLock()  # held around the file lock; stop() may run inside it

    # ------------------------------------------------------------------ the study
    def settings(self) -> dict:
        """What makes a search this search: a second command on the same folder must agree."""
        skip = ("sweep.trials=", "sweep.dir=")
        return {"config": str(Path(self.config).resolve()), "overrides": [o for o in self.overrides
                                                                       if not o.startswith(skip)],
                "space": [d.describe() for d in self.dimensions],
                "monitor": self.monitor, "mode": self.mode, "sampler": self.sampler_name, "seed": self.seed,
                "pruner": self.pruner, "pruner_args": self.pruner_args}

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
            s = study.load(self.folder, self.pruner, self.pruner_args, self.mode)
            mine = json.loads(json.dumps(self.settings()))
            theirs = s.user_attrs.get("settings")
            if theirs is None:
                s.set_user_attr("settings", mine)
                baseline = self.baseline_values()
                if baseline:
                    s.enqueue_trial(baseline)
            elif theirs != mine:
                different = [f"{k}: {_shown(theirs.get(k))} there, {_shown(mine.get(k))} now" for k in SETTINGS
                             if theirs.get(k) != mine.get(k)]
                raise ConfigError(f"{self.folder} holds a search with other settings ({'; '.join(different)}); run "
                                  f"its command to continue it (--trials may grow), or give another --dir")
        return s

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

    def claim(self, s):
        """The next trial for this worker: a dead worker's unfinished trial, else a new one while
        fewer than N are done or running. Returns (number, values, owner lock) or None."""
        from optuna.trial import TrialState

        from train.base.lock import FolderInUse, OutputLock

        keys = {d.key for d in self.dimensions}
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
            if self.stopped_by:
                return None
            if done + running >= self.trials:
                return WAIT if waiting else None
            if failed >= max(3, self.trials):
                raise RunError(f"{failed} trials failed (see their trial.log in {self.folder}); the search stops")
            from train.tuning import study

            s.sampler = study.sampler(self.sampler_name, self.seed + len(trials))  # the same search, the same trials
            trial = s.ask()
            values = {d.key: d.suggest(trial) for d in self.dimensions}
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

    # ------------------------------------------------------------------ one trial
    def command(self, number: int, values: dict, cpus: list[int] | None) -> list[str]:
        from train.tuning.space import override

        report_to = {"name": "train.pruning:ReportToStudy",
                     "args": {"folder": str(self.folder.resolve()), "trial": number, "monitor": self.monitor,
                              "pruner": self.pruner, "pruner_args": self.pruner_args}}
        extra = [override("output_dir", str(self.trial_folder(number))),
                 override("callbacks", [*self.callbacks, report_to]),
                 override("tracking.group", self.tracking.group or self.folder.name),
                 override("tracking.run_name", f"{self.folder.name}/trial-{number:04d}")]
        pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        return [*pin, *self.launch, "--config", self.config, *self.overrides,
                *(override(k, v) for k, v in values.items()), *extra]

    def retrain_command(self, values: dict) -> str:
        from train.tuning.space import override

        wrapper = os.path.relpath(self.launch[0]) if Path(self.launch[0]).is_absolute() else self.launch[0]
        if Path(wrapper).name == "step.sh":
            wrapper = "sbatch slurm/train.sh"
        kept = [o for o in self.overrides if not o.startswith("sweep.")]
        return shlex.join([*wrapper.split(), "--config", self.config, *kept,
                           *(override(k, v) for k, v in values.items()),
                           override("output_dir", f"{self.folder}/best")])

    def run_trial(self, number: int, values: dict, adopted: bool, cpus) -> int:
        folder = self.trial_folder(number)
        shown = " ".join(f"{k}={_short(v)}" for k, v in values.items())
        if (folder / "pruned.json").exists():
            return 0  # pruned, but its worker died before the study heard of it
        if adopted:
            self.wait_for_earlier_run(folder)
            say(f"trial {number} continues: {shown} ({folder})")
        else:
            say(f"trial {number}: {shown} ({folder})")
        # the trial runs in the search's environment (its interpreter's accelerate, as if activated)
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = dict(os.environ, PATH=path, PYTHONUNBUFFERED="1", TRAIN_STOP_WITH_PARENT=str(os.getpid()))
        with open(folder / "trial.log", "a") as log:
            with self.guard:
                if self.stopped_by:
                    return self.stopped_by_code()
                proc = subprocess.Popen(self.command(number, values, cpus), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                self.running[number] = proc
            if self.stopped_by > 0 and self.forward_signals:  # a signal came while it was starting
                self.pass_on(proc, self.stopped_by)
            code = proc.wait()
        with self.guard:
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

        folder = self.trial_folder(number)
        if code in STOP_CODES or (code != 0 and self.stopped_by > 0):
            say(f"trial {number} stopped (exit {code}): the next run of this search continues it")
            self.stop(code if code in STOP_CODES else self.stopped_by_code())
            return
        why = _last_error(folder / "trial.log") or f"exit {code}"
        if code == 2 and "is in use by" in why:  # the run a killed worker left is still ending
            say(f"trial {number} is still held by an earlier run ({why}); the next run of this search continues it")
            self.stop(code)
            return
        if code != 0:
            s.tell(number, state=TrialState.FAIL)
            say(f"trial {number} failed: {why} (see {folder}/trial.log)")
            if code in (2, 74):  # a mistake in the config or a full disk: every trial would fail alike
                self.stop(code)
            return
        rows = _history(folder)
        marker = folder / "pruned.json"
        if marker.exists():
            try:
                epoch = json.loads(marker.read_text())["epoch"]
            except (OSError, ValueError, KeyError):
                epoch = len(rows)
            s.tell(number, state=TrialState.PRUNED)
            say(f"trial {number} pruned after epoch {epoch} of {self.config_values.epochs}: {self.monitor} "
                f"{_short(rows[-1].get(self.monitor)) if rows else '?'}")
            return
        values = [r[self.monitor] for r in rows if self.monitor in r and not _nan(r[self.monitor])]
        if not values:
            s.tell(number, state=TrialState.FAIL)
            columns = ", ".join(rows[-1]) if rows else "none"
            raise ConfigError(f"trial {number} has no '{self.monitor}' in its history (columns: {columns}); set "
                              f"sweep.monitor to one of them")
        best = Monitor(self.monitor, self.mode).best(values)
        s.tell(number, best)
        say(f"trial {number} done: {self.monitor} {_short(best)} ({len(rows)} epochs)")

    # ------------------------------------------------------------------ workers, signals
    def stopped_by_code(self) -> int:
        return 130 if self.stopped_by == signal.SIGINT else 75

    def stop(self, code: int) -> None:
        with self.guard:
            self.stop_code = self.stop_code or code
            self.stopped_by = self.stopped_by or -1

    def on_signal(self, signum, frame) -> None:
        """Ctrl-C, SIGTERM, SIGUSR1 (preemption): no new trials; the running ones save and stop."""
        first = not self.stopped_by or self.stopped_by == -1
        self.stopped_by = signum if first else self.stopped_by
        self.stop_code = self.stop_code or (130 if signum == signal.SIGINT else 75)
        if first:
            print(f"sweep: {signal.Signals(signum).name}: the running trials save a checkpoint and stop",
                  file=sys.stderr, flush=True)
        if self.forward_signals:
            for proc in list(self.running.values()):
                self.pass_on(proc, signum)

    @staticmethod
    def pass_on(proc, signum: int) -> None:
        try:
            os.kill(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        except OSError:
            pass

    def worker(self, slot: int, cpus) -> None:
        from train.tuning import study

        s = study.load(self.folder, self.pruner, self.pruner_args)
        while not self.stopped_by:
            claimed = self.claim(s)
            if claimed is None:
                return
            if claimed == WAIT:
                time.sleep(5)  # until the stopped trial's worker is back, or its grace has passed
                continue
            number, values, owner, adopted = claimed
            try:
                code = self.run_trial(number, values, adopted, cpus)
                with self.exclusive():
                    self.settle(s, number, code)
                    self.write_results(s)
            finally:
                owner.release()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        s = self.open_study()
        say(f"sweep: {self.trials} trials of {self.config} over {', '.join(d.key for d in self.dimensions)}; "
            f"{self.mode} {self.monitor}; {self.sampler_name} sampler (seed {self.seed}), pruner {self.pruner}; "
            f"{self.workers} at a time; in {self.folder}")
        errors: list[BaseException] = []

        def guarded(slot, cpus):
            try:
                self.worker(slot, cpus)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                errors.append(e)
                self.stop(getattr(e, "exit_code", 1))

        threads = [threading.Thread(target=guarded, args=(i, cpus), name=f"sweep-worker-{i}", daemon=True)
                   for i, cpus in enumerate(_cpu_shares(self.workers))]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short joins: the main thread must stay free to take signals
        self.write_results(s, plot=True)
        if errors:
            raise errors[0]
        if self.stop_code:
            return self.stop_code
        self.summary(s)
        return 0

    # ------------------------------------------------------------------ results
    def table(self, s) -> list[dict]:
        rows = []
        for t in s.get_trials(deepcopy=False):
            if t.state.name == "WAITING":
                continue
            history = _history(self.trial_folder(t.number))
            value = t.value
            if value is None and t.intermediate_values:
                value = t.intermediate_values[max(t.intermediate_values)]
            rows.append({"number": t.number, **{d.key: t.params.get(d.key) for d in self.dimensions},
                         "objective": value, "state": t.state.name, "epochs": len(history),
                         "time_s": round(sum(float(r.get("epoch_s", 0) or 0) for r in history), 2),
                         "folder": str(self.trial_folder(t.number))})
        return rows

    def write_results(self, s, plot: bool = False) -> None:
        import pandas as pd

        from train.base.files import atomic_write_text
        from train.callbacks.plots import plot_sweep

        rows = self.table(s)
        if not rows:
            return
        frame = pd.DataFrame(rows).rename(columns={"objective": f"objective ({self.monitor})"})
        atomic_write_text(self.folder / "trials.csv", frame.to_csv(index=False))
        if plot:
            plot_sweep(rows, [(d.key, d.is_log or _spans_decades(d.choices)) for d in self.dimensions],
                       self.monitor, self.mode, self.folder / "sweep.png")

    def summary(self, s) -> None:
        from optuna.trial import TrialState

        trials = s.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        running = sum(t.state == TrialState.RUNNING for t in trials)
        counts = f"{len(complete)} complete, {len(done) - len(complete)} pruned" + \
            (f", {running} running in other workers" if running else "")
        say(f"sweep: {len(done)} of {self.trials} trials done ({counts}); {self.folder}/trials.csv, "
            f"{self.folder}/sweep.png")
        if not complete:
            return
        best = s.best_trial
        shown = " ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        say(f"best: trial {best.number}, {self.monitor} {_short(best.value)}: {shown}")
        print(f"  its model: train.load_model('{self.trial_folder(best.number)}')", flush=True)
        print(f"  retrain it: {self.retrain_command(best.params)}", flush=True)


def _shown(value) -> str:
    """A setting as the user wrote it: a space as `key kind [low, high]; ...`, a list without brackets."""
    if isinstance(value, list):
        return "; ".join(map(str, value)) or "none"
    return str(value)


def _spans_decades(choices) -> bool:
    """Numeric choices spread over two decades or more read best on a log scale."""
    numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    return bool(numbers) and len(numbers) == len(choices) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _history(folder: Path) -> list[dict]:
    """The trial's history rows (none before its first epoch)."""
    import pandas as pd

    try:
        return pd.read_csv(folder / "history.csv").to_dict("records")
    except (OSError, pd.errors.EmptyDataError):
        return []


def _last_error(log: Path) -> str:
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


def _cpu_shares(workers: int) -> list:
    """Each of `workers` trials at a time gets its own share of this process's cores (none to pin
    with one worker)."""
    if workers == 1:
        return [None]
    cpus = sorted(os.sched_getaffinity(0))
    if workers >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(workers)]
    per = len(cpus) // workers
    return [cpus[i * per:(i + 1) * per] for i in range(workers)]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the YAML config every trial starts from")
    parser.add_argument("--space", help="a YAML file: {config key: {log_uniform|uniform|int: [low, high]} or "
                                        "{choice: [...]}} (default: the config's sweep.space)")
    parser.add_argument("--trials", type=int, help="trials to finish (default: sweep.trials)")
    parser.add_argument("--dir", help="the search's folder (default: sweep.dir, else <output_dir>-sweep)")
    parser.add_argument("--workers", type=int, default=1,
                        help="trials at a time on this machine, each with its share of the cores (default 1)")
    parser.add_argument("--launch", default=str(ROOT / "launch" / "one.sh"),
                        help="the wrapper each trial runs under (default launch/one.sh)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every trial")
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        report(UserError("the search needs optuna: pip install optuna (or pip install -e '.[tune]')"))
        return 2
    try:
        return Search(args).run()
    except RunError as e:
        return ended_by(e)
