"""Hyperparameter search over real runs:

    python -m train.sweep --config CONFIG --space SPACE.yaml --trials N [--dir DIR] [--workers W]
                          [--launch WRAPPER] [key=value ...]

Optuna proposes each trial's values (its seeded TPE sampler by default); each trial is a real run of
the config with those values as overrides, in `DIR/trial-NNNN/`, started through a launch wrapper
(`launch/one.sh` by default; `launch/cpu2.sh`, `launch/gpus.sh`, or `slurm/step.sh` inside an sbatch
job) with its supervisor, restarts and exit codes. Each epoch's monitor goes to the study and its
pruner (median by default) may stop a trial at an epoch end (`train.tuning.pruning`).

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
import os
import signal
import sys
import threading
import time

from train.base.errors import RunError, UserError, report
from train.base.paths import ROOT
from train.supervision.reports import ended_by
from train.tuning.claims import WAIT, Claims
from train.tuning.results import Results, say
from train.tuning.settings import SearchSettings
from train.tuning.shares import shares, visible_gpus
from train.tuning.trial import Trials


class Search:
    """One worker of a search (with `workers` trials at a time): its settings, its claims on the
    study, its trials, its results, and what a stop signal does to them."""

    def __init__(self, args):
        self.settings = SearchSettings(args)
        self.forward_signals = os.environ.get("SWEEP_FORWARD_SIGNALS", "1") != "0"
        self.stopped_by = 0
        self.stop_code = 0
        self.claims = Claims(self.settings, lambda: bool(self.stopped_by))
        self.guard = self.claims.guard
        self.trials = Trials(self.settings, self)
        self.results = Results(self.settings)

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
            for proc in list(self.trials.running.values()):
                self.pass_on(proc, signum)

    @staticmethod
    def pass_on(proc, signum: int) -> None:
        try:
            os.kill(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        except OSError:
            pass

    def worker(self, slot: int, share) -> None:
        from train.tuning import study

        s = study.load(self.settings.folder, self.settings.pruner, self.settings.pruner_args)
        while not self.stopped_by:
            claimed = self.claims.claim(s)
            if claimed is None:
                return
            if claimed == WAIT:
                time.sleep(5)  # until the stopped trial's worker is back, or its grace has passed
                continue
            number, values, owner, adopted = claimed
            try:
                code = self.trials.run_trial(number, values, adopted, share)
                with self.claims.exclusive():
                    self.trials.settle(s, number, code)
                    self.results.write_results(s)
            finally:
                owner.release()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        s = self.claims.open_study()
        c = self.settings
        say(f"sweep: {c.trials} trials of {c.config} over {', '.join(d.key for d in c.dimensions)}; "
            f"{c.mode} {c.monitor}; {c.sampler_name} sampler (seed {c.seed}), pruner {c.pruner}; "
            f"{c.workers} at a time; in {c.folder}")
        errors: list[BaseException] = []

        def guarded(slot, share):
            try:
                self.worker(slot, share)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                errors.append(e)
                self.stop(getattr(e, "exit_code", 1))

        slots = shares(c.workers, visible_gpus() if c.workers > 1 else [])
        if c.workers > 1:
            say("; ".join(f"trials in slot {i}: {share.words()}" for i, share in enumerate(slots)))
        threads = [threading.Thread(target=guarded, args=(i, share), name=f"sweep-worker-{i}", daemon=True)
                   for i, share in enumerate(slots)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short joins: the main thread must stay free to take signals
        self.results.write_results(s, plot=True)
        if errors:
            raise errors[0]
        if self.stop_code:
            return self.stop_code
        self.results.summary(s)
        return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the YAML config every trial starts from")
    parser.add_argument("--space", help="a YAML file: {config key: {log_uniform|uniform|int: [low, high]} or "
                                        "{choice: [...]}} (default: the config's sweep.space)")
    parser.add_argument("--trials", type=int, help="trials to finish (default: sweep.trials)")
    parser.add_argument("--dir", help="the search's folder (default: sweep.dir, else <output_dir>-sweep)")
    parser.add_argument("--workers", type=int, default=1,
                        help="trials at a time on this machine, each with its share of the cores and GPUs "
                             "(CUDA_VISIBLE_DEVICES per trial; default 1)")
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
