"""A training run from start to finish: the object every front builds and drives.

`Run(model, optimizer, loss, metrics, options=RunOptions(...))` owns the accelerator and the loop;
`run.fit(epochs, train, val)` trains. With `options.output_dir` it also owns everything around the
loop: the folder's lock, finding and verifying a checkpoint to resume from (`resume`), the plan,
`config.yaml` (where a config was given), `history.csv`, `history.png`, checkpoints, trackers, the
final `model.safetensors`, and the endings on purpose: SIGUSR1/SIGTERM save and end the process with
exit 75, Ctrl-C saves and ends it with exit 130 (each after one line, without a traceback). Without
an output folder nothing is written and no signal is caught."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional
import torch

from train.callbacks.determinism_note import DeterminismNote
from train.callbacks.early_stopping import EarlyStopping
from train.callbacks.history_csv import HistoryCSV
from train.callbacks.slow_data import SlowDataWarning
from train.callbacks.step_log import StepLog
from train.callbacks.profiler import profilers
from train.service.batch_find import find_keeping_state
from train.callbacks.stop_signals import StopSignals
from train.callbacks.table import EpochTable
from train.saving.checkpoint import Checkpoint, Resumed
from train.data.loaders import spare_cpus
from train.engine.devices import accelerator_for, from_main, local_processes  # noqa: F401 (accelerator_for: re-exported)
from train.base.text import wrapped
from train.base.errors import Preempted, RunError, UserError
from train.service import endings
from train.engine.history import check_column, metric_columns
from train.engine.loop import Loop
from train.config.comparison import refuse_other_run
from train.config.options import RunOptions
from train.callbacks.progress_beat import progress_beats
from train.supervision.reports import record_exit, record_start


class Run:
    """One training run: see the module's docstring. Build it, `fit` it, `close` it."""

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, loss=None,
                 metrics: Optional[Mapping[str, object]] = None, *, scheduler=None, scheduler_interval: str = "epoch",
                 options: Optional[RunOptions] = None, accelerator=None, callbacks: Iterable = (),
                 config=None, plan_notes: Iterable[str] = (), origin: Optional[dict] = None):
        """`metrics` maps names to `f(y_pred, y_true)` or torchmetrics-style objects; `scheduler`
        is stepped per epoch or per optimizer step (`scheduler_interval`). `accelerator`: one made
        beforehand with `train.engine.devices.make_accelerator` (the script needs its device to place the
        data), else one is made from the options. `config` (a `train.Config`) is written to
        `config.yaml`; `plan_notes` are extra lines for the plan (how the data is loaded).
        `loss=None` trains on the model's own loss (see `train.data.batches`). `origin`: what rebuilding
        the model needs beyond the config (written to `run.json` with the working folder)."""
        self.options = o = options or RunOptions()
        self.accelerator = accelerator = accelerator or accelerator_for(o)
        self.loop = Loop(model, optimizer, loss, metrics, accelerator=accelerator, scheduler=scheduler,
                         scheduler_interval=scheduler_interval, max_grad_norm=o.max_grad_norm,
                         nonfinite=o.nonfinite, channels_last=o.channels_last, steps_per_epoch=o.steps_per_epoch,
                         graphs=o.graphs, peak_tflops=o.peak_tflops, ema=o.ema)
        self.loop.output_dir = o.output_dir
        self.callbacks = list(callbacks)
        self.config = config
        self.plan_notes = list(plan_notes)
        self.origin = dict(origin or {})
        self.name = o.name or type(model).__name__
        self.resumed: Optional[Resumed] = None
        self.checkpoint: Optional[Checkpoint] = None
        self.trackers: dict = {}
        self._lock = None

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # ---------------------------------------------------------------------------------- fit
    def fit(self, epochs: int, train, val=None, callbacks: Iterable = ()):
        """Train until epoch `epochs` (the run's total: after a resume from epoch 2, `fit(4)`
        trains epochs 3 and 4); returns the `History`, the same on every process (the fronts
        give its `.frame()`, a DataFrame; the script needs no pandas)."""
        o, loop = self.options, self.loop
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise UserError(f"epochs must be an int >= 0; got {epochs!r}")
        stop_signals = StopSignals() if o.output_dir else None
        try:
            if stop_signals is not None:  # first: a signal during the slow start-up is not lost
                stop_signals.install(loop.request_stop)
                record_start(o.output_dir)
            if o.seed is not None:
                from accelerate.utils import set_seed

                set_seed(o.seed)
            train, val = loop.prepare_loader(train), loop.prepare_loader(val)
            self.check_model_takes(train)
            if o.output_dir is None:  # no plan printed: what it would say of the step, if asked for
                if self.is_main_process and loop.step_notes:
                    print("\n".join(wrapped(f"note: {note}") for note in loop.step_notes), flush=True)
                return loop.fit(epochs, train, val, [*self._watchers(val is not None), *self.callbacks,
                                                       *callbacks], o.log_step_freq)
            out = Path(o.output_dir)
            self._lock_folder(out)
            everyone, manager = self._service(out, val is not None, stop_signals, [*self.callbacks, *callbacks],
                                              spare_cpus(train, local_processes(loop.accelerator)))
            path = manager.find(o.resume, say=lambda line: print(line, flush=True))
            if path is not None:
                if self.config is not None:  # a folder whose run has other settings is refused
                    refuse_other_run(out, self.config)
                self.resumed = manager.load(path)  # the one moment a run is put back: every part
                if not manager.owns(path):
                    self.tracker.run_id = None  # another folder's checkpoint: not its W&B run
            if self._finished(epochs, out):
                record_exit(0, "finished", **endings.where(self))
                return loop.history
            if path is not None:  # newer checkpoints of another continuation: out of rotation's way, said
                manager.set_aside_newer(path, say=lambda line: print(line, flush=True))
            self._start_trackers(out)
            self._announce(epochs, train)
            history = loop.fit(epochs, train, val, everyone, o.log_step_freq)
            self._write_weights(Path(o.output_dir))
            record_exit(0, "finished", **endings.where(self))
            return history
        except Preempted as e:  # Interrupted too: a checkpoint was saved; end the process quietly
            raise endings.preempted(self, e) from None
        except RunError as e:
            endings.on_purpose(self, e)
            raise
        except BaseException as e:
            contact = endings.crashed(self, e)
            if contact is not None:
                raise contact from None
            raise
        finally:
            if stop_signals is not None:
                stop_signals.restore()
            self._finish_trackers()
            self._close_lock()

    def evaluate(self, data, prefix: str = "val_") -> dict:
        with self.loop.averaged():
            return self.loop.evaluate(data, prefix)

    def predict(self, data, with_targets: bool = False):
        with self.loop.averaged():
            return self.loop.predict(data, with_targets)

    # ------------------------------------------------ one batch at a time (functions, preflight)
    metrics = property(lambda self: self.loop.metrics)
    device = property(lambda self: self.loop.device)
    parameters = property(lambda self: self.loop.model.parameters, doc="the prepared model's parameters()")

    def prepare(self, data):
        """A loader sharded over processes and placed on the device (see `Loop.prepare_loader`)."""
        return self.loop.prepare_loader(data)

    def split(self, batch):
        return self.loop.split(batch)

    def find_batch_size(self, data, collate, settings: dict, accumulation: int):  # train.service.batch_find
        return find_keeping_state(self.loop, data, collate, settings, accumulation)

    def train_step(self, features, labels):
        """One training step on one batch: (loss, predictions, labels), on the device."""
        self.loop.model.train()
        features, labels = self.loop.to_device(features, labels)
        loss, preds = self.loop.train_step(features, labels)
        return loss, preds, labels

    def eval_step(self, features, labels):
        """Loss, predictions and labels of one batch without training (gathered from all processes)."""
        self.loop.model.eval()
        return self.loop.eval_step(*self.loop.to_device(features, labels))

    stepped = property(lambda self: self.loop.stepped, doc="whether the last train_batch ended an optimizer step")

    def set_learning_rate(self, lr: float) -> None:
        """Every parameter group's learning rate, from now on (the LR finder's ramp)."""
        for group in self.loop.optimizer.param_groups:
            group["lr"] = lr

    def uses(self, optimizer) -> bool:
        return self.loop.optimizer is not None and self.loop.optimizer.optimizer is optimizer

    def state(self) -> dict:  # the loop's position and history, to continue in another Run of the same model
        return self.loop.state_dict()

    def continue_from(self, state: dict) -> None:
        self.loop.load_state_dict(state)

    # ------------------------------------------------------------------- before training
    def check_model_takes(self, train) -> None:
        """A real batch through the model, the loss and the metrics (`train.engine.checks.check_data`):
        before anything is written, with one line on failure; its warnings said on stderr."""
        from train.engine.checks import check_data

        for warning in check_data(self.loop, train, self.name, self.options.num_classes):
            if self.is_main_process:
                endings.say(f"warning: {warning}")

    def _lock_folder(self, out: Path) -> None:
        """Take the output folder's lock (the main process; the others wait for it)."""
        from train.base.lock import OutputLock

        def lock():
            created = not out.exists()
            self._lock = OutputLock(out)
            self._lock.acquire()
            self._created_folder = created

        from_main(self.accelerator, lock)

    def _finished(self, epochs: int, out: Path) -> bool:
        """A resumed run that has already trained `epochs` epochs (or stopped early): one line, and
        no file changes, but for final weights a killed or failed run never wrote."""
        r = self.resumed
        stopped = (r.parts.get("early_stopping") or {}).get("stopped_epoch") if r is not None else None
        if r is None or r.position["epoch"] > len(r.history) or (len(r.history) < epochs and not stopped):
            return False
        if not (out / "model.safetensors").is_file():
            self._write_weights(out)
            return True
        if self.is_main_process:
            how = f"stopped early at epoch {stopped}" if stopped else f"of {len(r.history)} epoch(s)"
            print(wrapped(f"{self.options.output_dir} holds a finished run {how}: nothing to train for "
                          f"epochs={epochs}, no file changed; raise epochs to train on, or use another output_dir"),
                  flush=True)
        return True

    def _service(self, out: Path, validation: bool, stop_signals, users: list,
                 spare_cpus: int | None = None) -> tuple[list, Checkpoint]:
        """The callbacks of a run with an output folder (the service's, then the user's, then the
        checkpoint, which saves what the others updated), and the checkpoint manager, built with
        every stateful part. Nothing is started or written yet."""
        from train.callbacks.plots import HistoryPlot
        from train.callbacks.progress import progress_for
        from train.callbacks.tracking import TrackerRun, Tracking

        o = self.options
        columns = [*metric_columns(self.loop.metrics, validation), "lr"]
        self.tracker = TrackerRun()
        service = [progress_for(o.progress, o.log_every_s), *self._watchers(validation, columns),
                   SlowDataWarning(spare_cpus=spare_cpus), HistoryCSV(out / "history.csv"), HistoryPlot(out / "history.png"),
                   *([Tracking()] if o.trackers else []), stop_signals, *progress_beats(), *users]
        monitor = o.checkpoint_monitor or ("val_loss" if validation else "loss")
        manager = Checkpoint(self.loop, out / "checkpoints", o.checkpoint_every, o.keep_last,
                             check_column(monitor, columns, "checkpoint_monitor"), o.checkpoint_mode,
                             parts=[*service, self.tracker, *filter(None, [self.loop.average])],
                             background=o.checkpoint_async,
                             timeout_s=o.collective_timeout_s or 600.0, memory_every=o.checkpoint_memory_every)
        self.checkpoint = manager if o.checkpoint else None
        return [*service, *([manager] if o.checkpoint else [])], manager

    def _start_trackers(self, out: Path) -> None:
        """Start the trackers, continuing the W&B run a resumed checkpoint names."""
        from train.callbacks.tracking import start_trackers

        self.trackers, self.tracker.run_id = start_trackers(self.accelerator, self.options, out, self.tracker.run_id,
                                                            self.config)

    def _watchers(self, validation: bool, columns=None) -> list:
        """The table, the tutorial's step lines and early stopping: with or without a folder."""
        o = self.options
        columns = columns or [*metric_columns(self.loop.metrics, validation), "lr"]
        watchers = [EpochTable(), *([StepLog()] if o.step_lines and o.log_step_freq else []),
                    *([DeterminismNote()] if o.deterministic else []), *profilers(o.profile)]
        if o.early_stopping:
            watchers.append(EarlyStopping(check_column(o.early_stopping, columns, "early_stopping"),
                                          o.early_stopping_mode, o.early_stopping_patience,
                                          o.early_stopping_min_delta, o.early_stopping_restore_best))
        return watchers

    def _announce(self, epochs: int, train) -> None:
        """`config.yaml` (where a config was given), then the plan."""
        if self.config is not None:
            from train.config.loading import save_config
            from train.engine.devices import write_on_main

            from train.saving.export import write_origin

            path = Path(self.options.output_dir) / "config.yaml"
            write_on_main(self.accelerator, lambda: save_config(self.config, path), path)
            write_origin(self.accelerator, path.parent, **self.origin)
        if not self.is_main_process:
            return
        from train.service.plan import plan_lines

        for line in plan_lines(self, epochs, train):
            print(line, flush=True)

    # ------------------------------------------------------------------- after training
    def _write_weights(self, out: Path) -> None:
        """Final weights (see `train.saving.export`), then one line naming what the folder holds."""
        from train.saving.export import write_final_weights

        weights = write_final_weights(self.accelerator, self.loop, out, self.options.export_merged)
        if self.is_main_process:
            files = ", ".join(["history.csv, history.png", *weights, *(["config.yaml, run.json"] if self.config else [])])
            line = f"wrote {self.options.output_dir}/: {files}" + (", checkpoints/" if self.checkpoint else "")
            print(wrapped(line), flush=True)

    def _finish_trackers(self) -> None:
        for tracker in getattr(self.accelerator, "trackers", []):
            try:
                tracker.finish()
            except Exception:  # a tracker that cannot finish must not hide the run's own ending
                pass
        if self.trackers:
            self.accelerator.trackers = []

    def _close_lock(self) -> None:
        if self._lock is None:
            return
        self._lock.release()
        out = self._lock.path.parent
        if getattr(self, "_created_folder", False) and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that never started leaves nothing behind
        self._lock = None

    def close(self) -> None:
        """Release the prepared objects and the process group."""
        self.loop.close()
