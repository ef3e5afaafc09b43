"""The callback a search adds to each of its trials' runs: each epoch's monitor goes to the study
(Optuna's `trial.report`), and the pruner may stop the trial at that epoch's end.

The main process talks to the study and decides; the decision is broadcast, so that every process
stops after the same epoch. A pruned run leaves `pruned.json` in its folder: the search reads it,
and a rerun of the folder stops at once instead of training on.
"""

from __future__ import annotations

import json
from pathlib import Path

from train.engine.events import Callback

MARKER = "pruned.json"


class ReportToStudy(Callback):
    def __init__(self, folder: str, trial: int, monitor: str, pruner: str = "median", pruner_args: dict | None = None):
        self.folder, self.number, self.monitor = folder, int(trial), monitor
        self.pruner, self.pruner_args = pruner, dict(pruner_args or {})
        self._trial = None

    def on_train_begin(self, run):
        pruned = [run.is_main_process and run.output_dir is not None and (run.output_dir / MARKER).exists()]
        if run.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(pruned)  # the main process's view of the folder decides for all
        if pruned[0]:
            run.stop_training()  # pruned before: the trial is over

    def _study_trial(self):
        if self._trial is None:
            import optuna

            from train.tuning import study

            s = study.load(self.folder, self.pruner, self.pruner_args)
            trial_id = s._storage.get_trial_id_from_study_id_trial_number(  # optuna has no public lookup by number
                s._storage.get_study_id_from_name(study.STUDY_NAME), self.number)
            self._trial = optuna.trial.Trial(s, trial_id)
        return self._trial

    def on_epoch_end(self, epoch, row, run):
        from accelerate.utils import broadcast_object_list

        verdict = [None]
        if run.is_main_process:
            if self.monitor not in row:
                verdict = [f"the search's monitor '{self.monitor}' is not a history column ({', '.join(row)})"]
            else:
                trial = self._study_trial()
                trial.report(float(row[self.monitor]), epoch)
                if trial.should_prune():
                    verdict = [f"pruned by the search's {self.pruner} pruner after epoch {epoch}: "
                               f"{self.monitor} {row[self.monitor]:.6g}"]
        if run.num_processes > 1:
            broadcast_object_list(verdict)  # every process stops after the same epoch, or none does
        if verdict[0] is None:
            return
        if not verdict[0].startswith("pruned"):
            from train.base.errors import ConfigError

            raise ConfigError(verdict[0] + "; set sweep.monitor to one of them")
        run.stop_training()
        if run.is_main_process:
            from train.base.files import atomic_write_text

            atomic_write_text(Path(run.output_dir, MARKER), json.dumps({"epoch": epoch, "value": float(row[self.monitor])}))
            print(verdict[0], flush=True)
