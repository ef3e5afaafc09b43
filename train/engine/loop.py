"""The one training loop: the train step, the eval step, the epoch loop, `evaluate` and `predict`.

Words used throughout the project: a *batch* is one batch of training data on each process (one
forward and backward pass); an *optimizer step* (a *step*) updates the weights once, after
`gradient_accumulation_steps` batches. `epoch` and `batch` count from 1; `step` counts optimizer
steps since the run began, across resumes: it names checkpoints and is the trackers' x-axis.

Devices, processes, precision and gradient accumulation all come from `accelerate.Accelerator`, so
the same code runs on a CPU, one GPU or many. Every front drives this `Loop`; none has a copy of
the step. This module prints nothing, writes no files and knows nothing of checkpoints: it hands
its state to whoever saves it (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import contextlib

from typing import Iterable, Mapping, Optional

import torch
from accelerate import Accelerator
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

from train.data.batches import call_model, split_batch  # noqa: F401 (call_model: re-exported)
from train.data.loaders import served_from_memory
from train.engine.events import CallbackList
from train.engine.evaluation import Evaluation
from train.engine.position import Position
from train.engine.devices import host_group, make_accelerator, shutdown, to_device
from train.base.errors import Interrupted, Preempted, UserError, check_choice
from train.engine.history import History, make_row
from train.engine.metrics import EpochSums
from train.config.options import NONFINITE, SCHEDULER_INTERVALS
from train.engine.rounds import batches_per_epoch, map_rounds, set_epoch, stream_rounds, windows
from train.engine.step_calls import zero_grad_of
from train.distributed.strategy import choose_units, sharding_note
from train.engine.step import Step
from train.engine.step_graph import StepGraph
from train.engine.stop_check import StatusCheck
from train.data.streams import is_stream, prepare_stream, replayable
from train.engine.targets import loss_scales, target_counter
from train.engine.averaging import weight_average
from train.engine.peak_flops import peak_flops
from train.engine.timing import EpochTimer, count_flops


class Loop(Evaluation, Position, Step):
    """Trains and evaluates one model with one optimizer under one `Accelerator`.

    `metrics` maps a name to `f(y_pred, y_true)` (a tensor or a number; mean over the batch) or to
    a torchmetrics-style object with update/compute/reset. `scheduler_interval` is "epoch" or
    "step" (one optimizer step). `nonfinite` says what a NaN/inf loss does: "stop" raises
    `NonFiniteLoss` at the next status check (see `train.engine.stop_check`), naming the first bad batch;
    "skip" drops that optimizer step (one device sync per step) and counts it in the history as
    `skipped_steps`. `loss_func=None` trains on the loss the model returns (a dict or `transformers`
    `ModelOutput` with `loss`; dict samples then keep their `labels` in the model's inputs). Samples
    and outputs may take any form of `train.data.batches`. Callbacks hear the events listed in
    `train.engine.events`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], loss_func,
                 metrics: Optional[Mapping[str, object]] = None, *, accelerator: Optional[Accelerator] = None,
                 scheduler=None, scheduler_interval: str = "epoch", max_grad_norm: Optional[float] = None,
                 nonfinite: str = "stop", channels_last: bool = False, callbacks: Iterable = (),
                 steps_per_epoch: Optional[int] = None, graphs: bool = False, peak_tflops: Optional[float] = None,
                 ema: Optional[dict] = None):
        check_choice("nonfinite", nonfinite, NONFINITE)
        check_choice("scheduler_interval", scheduler_interval, SCHEDULER_INTERVALS)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise UserError(f"max_grad_norm must be > 0 or None; got {max_grad_norm!r}")
        if loss_func is not None and not callable(loss_func):
            raise UserError(f"the loss must be callable as loss(y_pred, y_true), or None for the model's own "
                            f"loss; got {type(loss_func).__name__}")
        self.accelerator = accelerator or make_accelerator()
        self.channels_last = channels_last
        if channels_last:  # NHWC weights; 4-d batches are made NHWC in the steps
            model = model.to(memory_format=torch.channels_last)
        choose_units(self.accelerator, model)  # strategy=fsdp: what becomes a sharded unit
        if optimizer is None:  # evaluate/predict only
            self.model, self.optimizer = self.accelerator.prepare(model), None
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # The schedule is not prepared: Accelerate's wrapper steps it once per process per call,
        # while ours counts this run's optimizer steps (or epochs), the same on every process.
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_func = loss_func
        self.model_loss = loss_func is None  # the model computes its loss from the labels in its inputs
        # a token-level loss's targets per batch (train.targets); None: every loss is sample-level
        self.count_targets = target_counter(self.accelerator.unwrap_model(self.model, keep_torch_compile=False),
                                            loss_func)
        self.steps_per_epoch = steps_per_epoch  # None: until the data ends
        self.metrics = dict(metrics or {})
        self.max_grad_norm = max_grad_norm
        self.nonfinite = nonfinite
        self.callbacks = list(callbacks)
        self.status = StatusCheck(self.accelerator, watch_losses=nonfinite == "stop")
        self.output_dir = None  # the run's, for the callbacks' view (the loop itself writes nothing)
        self.events = CallbackList([], self)
        self.history = History()
        self.stop_training = False  # set by callbacks (early stopping)
        # where the loop is (see the module docstring for the words)
        self.epoch = 0
        self.batch = 0  # batches of the current epoch done
        self.step = 0  # optimizer steps since the run began
        self.samples_seen = 0  # training samples, all processes together, since the run began
        self.stepped = False  # whether the last batch ended with an optimizer step
        self.last_epoch = 0  # the epoch the current fit ends at
        self.batches_per_epoch: Optional[int] = 0  # None: a stream of unknown length
        self.last_round = False  # whether the current batch is the epoch's last
        self.skipped_steps = 0  # optimizer steps of this epoch dropped for a non-finite loss
        self.flops_per_sample: Optional[float] = None  # counted after the first epoch
        # one device's peak FLOP/s, for the history's mfu (None: unknown, no mfu column)
        self.peak_flops, peak_source = peak_flops(self.accelerator, peak_tflops)
        self._sums: Optional[EpochSums] = None
        self._epoch_lr = 0.0
        self._unfinished: Optional[dict] = None  # a checkpointed epoch to continue (load_state_dict)
        self._loaders: dict[int, object] = {}
        self.data_notes: list[str] = []  # how the loaders given to the loop are served (for the plan)
        self._zero_grad = zero_grad_of(self.optimizer) if self.optimizer is not None else None
        self.step_notes: list[str] = []  # how the step runs (for the plan)
        sharded = sharding_note(self.accelerator, self.model)
        if sharded:
            self.step_notes.append(sharded)
        if self.peak_flops or self.device.type == "cuda":  # a CPU without a figure given: nothing to say
            self.step_notes.append(f"mfu: {peak_source}")
        # ema: the weights' running average, kept beside the model (train.engine.averaging)
        self.average = weight_average(self.accelerator.unwrap_model(self.model, keep_torch_compile=False), ema)
        if self.average is not None:
            self.step_notes.append(self.average.note())
        self._graph: Optional[StepGraph] = None  # graphs=True where it applies (train.engine.step_graph)
        if graphs and self.optimizer is not None:
            self._graph = self._make_graph()
        self._last_batch = None  # this process's last real batch: a shadow round runs it again
        self._consumed = 0  # real batches of a stream this process trained on in this epoch
        self.stream_epoch = False  # whether the epoch being trained reads a stream
        self.saves_mid_epoch = True  # False for a stream that cannot be read again alike (train.streams)

    def load_state_dict(self, state: dict, rng: Optional[dict] = None) -> None:
        Position.load_state_dict(self, state, rng)
        if self._graph is not None and self.accelerator.gradient_accumulation_steps > 1:
            # resumed on fewer processes: the global batch kept by accumulation, which a graphed step does not do
            self._graph = None
            self.step_notes.append("graphs: off after resuming with gradient accumulation (on another process "
                                   "count): the step runs eagerly")
        if self._graph is not None:  # the optimizer's state tensors were just replaced
            self._graph.reset()

    # ------------------------------------------------------------------ small helpers
    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def prepare_loader(self, dl):
        """The loader sharded over processes and placed on the device (prepared once per loader). A
        stream is split by `train.data.streams` and only placed by Accelerate, not sharded again."""
        if dl is None or isinstance(dl, (DataLoaderShard, DataLoaderDispatcher)):
            return dl
        if id(dl) not in self._loaders:
            stream = is_stream(getattr(dl, "dataset", None))
            served, note = (dl, None) if stream else served_from_memory(dl, self.device)
            if note:
                self.data_notes.append(note)
            prepared = prepare_stream(dl, self.accelerator) if stream else self.accelerator.prepare(served)
            self._loaders[id(dl)] = (dl, prepared)  # keep dl alive: ids are reused
        return self._loaders[id(dl)][1]

    def rounds(self, dl, batches, total: Optional[int] = None, done: int = 0):
        """The epoch's rounds (`train.engine.rounds`) of the prepared loader `dl`, from its `batches`:
        `total` of them (None: the whole loader, or a stream until it ends), `done` already trained."""
        if is_stream(dl.dataset):
            return stream_rounds(batches, host_group(self.accelerator), self.accelerator.num_processes, total, done)
        return map_rounds(batches, total or len(dl), done)

    def to_device(self, *items):
        """Tensors (or tuples/dicts of them) moved to this loop's device."""
        return tuple(to_device(t, self.device) for t in items)

    def layout(self, features):
        """4-d batches in NHWC order when the model is (channels_last)."""
        if self.channels_last and torch.is_tensor(features) and features.dim() == 4:
            return features.contiguous(memory_format=torch.channels_last)
        return features

    def split(self, batch):
        """(inputs, targets) of a batch, whatever its form (see `train.data.batches`)."""
        return split_batch(batch, self.model_loss)

    def request_stop(self, signum: int) -> None:
        """Ask every process to stop at the next status check (safe to call from a signal handler)."""
        self.status.requested = signum

    def check_status(self) -> None:
        """Agree across processes now on signals and non-finite losses (a collective: every process
        calls it at the same batch). Raises `NonFiniteLoss` for a bad loss since the last check."""
        self.status.check((self.epoch, self.batch, self.step))

    def targets_of(self, batch):
        """What a batch's loss is a mean over, when it is not its samples on even batches: a
        token-level loss's target tokens, or a stream's samples; else None."""
        labels = batch[1]
        counted = self.count_targets(labels) if self.count_targets is not None else None
        if counted is None and self.stream_epoch:
            return torch.tensor(len(labels), device=self.device)
        return counted

    # -------------------------------------------------------------------- the epochs
    def train_epoch(self, dl, epoch: int, events=None, log_step_freq: Optional[int] = None) -> dict:
        """One pass over the prepared loader `dl` (or the rest of it, continuing a checkpointed
        epoch); returns the epoch's training averages over all processes and its timing."""
        events = events or self.events
        self.model.train()
        self.epoch, self.batch, self._consumed = epoch, 0, 0
        self.stream_epoch = is_stream(dl.dataset)
        self.saves_mid_epoch = not self.stream_epoch or replayable(dl.dataset)
        # a captured step adds into the sums' tensors: they are kept and zeroed
        self._sums = self._sums.reset() if self._graph is not None and self._sums is not None else \
            EpochSums(self.metrics, self.device)
        self.skipped_steps, self._epoch_lr = 0, self.optimizer.param_groups[0]["lr"]
        source, on_start = self._continue_unfinished(dl)
        events.on_epoch_begin(epoch=epoch)
        timer = EpochTimer(self.device)
        accumulation = self.accelerator.gradient_accumulation_steps
        rounds = self.rounds(dl, timer.batches(source, on_start, self.split), self.batches_per_epoch, self.batch)
        for window in windows(rounds, accumulation, self.batch):
            for r in window:
                r.targets = self.targets_of(r.batch) if r.batch is not None else 0
            for r, scale in zip(window, loss_scales(window, self.accelerator)):
                self.batch += 1
                self.last_round = r.last
                real = r.batch is not None
                if real:
                    self._last_batch = r.batch
                    self._consumed += 1
                features, labels = self._last_batch
                self.samples_seen += r.rows if self.stream_epoch else len(labels) * self.accelerator.num_processes
                if not real:  # a shadow round: no weight, and in eval mode (no running statistics updated)
                    self.model.eval()
                if real and scale is None and r.targets is None and self._graph is not None \
                        and self._graph.takes(features, labels):
                    self._graphed_step(features, labels)
                else:
                    loss, preds = self.train_step(features, labels, sync=r is window[-1],
                                                  scale=scale if real else torch.zeros((), device=self.device))
                    if not real:
                        self.model.train()
                    if real:
                        self._add(loss, preds, labels, r.targets if self.count_targets is not None else None)
                if self.stepped and self.status.due(self.step, r.last):
                    self.check_status()
                events.on_train_batch_end(batch=self.batch, step=self.step)
                if self.status.stop_signal:
                    events.on_interrupt(epoch=epoch, batch=self.batch, step=self.step)
                    stop = Interrupted if self.status.stop_signal == "SIGINT" else Preempted
                    raise stop(self.status.stop_signal, epoch, self.batch)
                if log_step_freq and self.batch % log_step_freq == 0:
                    # a device sync, at log points only
                    events.on_log(epoch=epoch, batch=self.batch, step=self.step, logs=self._sums.running())
                if self.stop_training:
                    break
            if self.stop_training:
                break
        if hasattr(dl, "end"):  # stopped before the loader's end (steps_per_epoch, early stop): Accelerate
            dl.end()            # would keep it as its active loader (end() is safe to call twice)
        self.check_status()
        if self.flops_per_sample is None and timer.first_sample is not None:
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            self.flops_per_sample = count_flops(model, call_model, timer.first_sample, self.accelerator.autocast)
        return {**self._sums.result(self.accelerator), **timer.row(self.accelerator, self.flops_per_sample, self.peak_flops)}

    def _add(self, loss, preds, labels, weight) -> None:
        """A trained batch into the epoch's sums (and the non-finite watch); `weight`: its targets,
        for a token-level loss."""
        if weight is not None:  # a batch without targets: its mean is 0 / 0, and nothing to watch
            loss = torch.where(weight > 0, loss, loss.new_zeros(()))
        if self.nonfinite == "stop":
            self._sums.add(loss, preds, labels, weight)
            self.status.add_loss(self.epoch, self.batch, loss)
        elif torch.isfinite(loss):  # a sync per batch: the price of skipping
            self._sums.add(loss, preds, labels, weight)

    def running_logs(self) -> dict:
        """This process's running averages in the current epoch (a device sync; for progress lines)."""
        return self._sums.running() if self._sums is not None else {}

    def fit(self, epochs: int, dl_train, dl_val=None, callbacks: Iterable = (),
            log_step_freq: Optional[int] = None) -> History:
        """Train until epoch `epochs` (the run's total: epochs already in the history, from an
        earlier fit or a checkpoint, count), validating after each; returns the `History` (the
        same on every process; `.frame()` for a DataFrame)."""
        if self.optimizer is None:
            raise UserError("no optimizer: pass one to compile() / Loop(...) before fit()")
        dl_train, dl_val = self.prepare_loader(dl_train), self.prepare_loader(dl_val)
        self.events = events = CallbackList([*self.callbacks, *callbacks], self, self.output_dir)
        self.stop_training = False
        self.last_epoch = epochs
        self.batches_per_epoch = batches_per_epoch(dl_train, self.steps_per_epoch,
                                                   self.accelerator.gradient_accumulation_steps)
        events.on_train_begin()  # may set stop_training (a resumed run that had already stopped early)
        for epoch in range(len(self.history) + 1, epochs + 1):
            if self.stop_training:
                break
            set_epoch(dl_train, epoch - 1)  # reshuffle: the order is a function of (seed, epoch)
            train = self.train_epoch(dl_train, epoch, events, log_step_freq)
            quantities = {k: train.pop(k) for k in ("loss", *self.metrics)}
            val = self.validate(dl_val) if dl_val is not None else {}
            skipped = self.skipped_steps if self.nonfinite == "skip" else None
            row = make_row(epoch, quantities, val, self._epoch_lr, skipped, train)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.history.append(row)
            events.on_epoch_end(epoch=epoch, logs=row, row=row, step=self.step)
        events.on_train_end(logs=self.history.rows[-1] if len(self.history) else {})
        return self.history

    def averaged(self):
        """A block in which the model holds its averaged weights, where the run averages them."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    def validate(self, dl) -> dict:
        """The epoch's validation: of the averaged weights where the run averages them (and, with
        ema.validate=both, of the trained ones too, as raw_val_*)."""
        with self.averaged():
            val = self.evaluate(dl)
        if self.average is not None and self.average.validate == "both":
            val.update(self.evaluate(dl, prefix="raw_val_"))
        return val

    def close(self) -> None:
        """Release the prepared objects and the process group (see `shutdown`)."""
        self._loaders.clear()
        shutdown(self.accelerator)
