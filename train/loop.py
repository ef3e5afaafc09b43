"""The one training loop: the train step, the eval step, epochs, and the events callbacks hear.

Devices, processes, precision and gradient accumulation all come from `accelerate.Accelerator`,
so the same code runs on a CPU, one GPU or many. The script, function and class fronts all drive
this `Loop`; none has a copy of the step. This module prints nothing and writes no files.
"""

from __future__ import annotations

import atexit
import gc
import time
from typing import Iterable, Mapping, Optional

import torch
from accelerate import Accelerator
from accelerate.data_loader import DataLoaderShard, DataLoaderDispatcher
from accelerate.utils import DataLoaderConfiguration

from .callbacks import CallbackList
from .errors import ConfigError, NonFiniteLoss, Preempted
from .history import TIMING_COLUMNS, History
from .metrics import EpochSums

# Every this many batches all processes agree, in one small collective, on whether to stop (a
# signal reached one of them) and whether a loss was NaN/inf. A device sync: not every step.
STATUS_EVERY = 10


def make_accelerator(mixed_precision: Optional[str] = None, gradient_accumulation_steps: int = 1,
                     seed: Optional[int] = None, **kwargs) -> Accelerator:
    """An `Accelerator` set up for this loop. `mixed_precision=None` takes the launcher's choice
    (`accelerate launch --mixed_precision ...`), else fp32. The shuffling order of each epoch is a
    function of `seed` (None: torch's seed when the loader is prepared, as `torch.manual_seed` or
    `set_seed` left it) and the epoch."""
    if mixed_precision == "fp16" and not (torch.cuda.is_available() or torch.backends.mps.is_available()
                                          or (hasattr(torch, "xpu") and torch.xpu.is_available())):
        raise ConfigError("mixed_precision=fp16 needs a GPU; on a CPU use mixed_precision=bf16 or no")
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        # the seedable sampler makes shuffling a function of (seed, epoch) on every process,
        # which is what makes an interrupted run resumable at the exact next batch
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed,
                                                  non_blocking=True),
        step_scheduler_with_optimizer=False,  # we step the schedule ourselves, see Loop.train_step
        **kwargs,
    )
    if accelerator.num_processes > 1:
        atexit.register(shutdown, accelerator)
    return accelerator


def shutdown(accelerator: Accelerator) -> None:
    """Release prepared objects, then end training (which destroys the process group).

    Two gloo ranks sometimes aborted at interpreter exit ("terminate called without an active
    exception") when DDP models outlived the process group; releasing them first cured it. Safe
    to call twice: the second call finds no group.
    """
    accelerator.free_memory()
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        accelerator.end_training()


class Loop:
    """Trains and evaluates one model with one optimizer under one `Accelerator`.

    `metrics` maps a name to `f(y_pred, y_true)` (a tensor or a number; mean over the batch) or
    to a torchmetrics-style object with update/compute/reset. `scheduler_interval` is "epoch" or
    "step" (one optimizer step). Callbacks hear the events listed in `train.callbacks`.
    `nonfinite` says what a NaN/inf loss does: "stop" raises `NonFiniteLoss` at the next status
    check (every `STATUS_EVERY` batches, the epoch end, each checkpoint), naming the first bad
    step; "skip" drops that optimizer step (one device sync per step) and counts it in the
    history as `skipped_steps`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                 loss_func, metrics: Optional[Mapping[str, object]] = None, *,
                 accelerator: Optional[Accelerator] = None, scheduler=None, scheduler_interval: str = "epoch",
                 max_grad_norm: Optional[float] = None, callbacks: Iterable = (), nonfinite: str = "stop",
                 channels_last: bool = False):
        self.accelerator = accelerator or make_accelerator()
        self.channels_last = channels_last
        if channels_last:  # NHWC weights; batches are made NHWC in train_step/eval_step
            model = model.to(memory_format=torch.channels_last)
        if optimizer is None:  # evaluate/predict only
            self.model, self.optimizer = self.accelerator.prepare(model), None
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # The schedule is not prepared: Accelerate's wrapper steps it once per process per call,
        # while ours counts this run's optimizer steps (or epochs), the same on every process.
        self.scheduler = scheduler
        if hasattr(scheduler, "state_dict") and hasattr(scheduler, "load_state_dict"):
            # so that save_state/load_state carry the schedule too
            self.accelerator.register_for_checkpointing(scheduler)
        self.scheduler_interval = scheduler_interval
        self.loss_func = loss_func
        self.metrics = dict(metrics or {})
        self.max_grad_norm = max_grad_norm
        self.callbacks = list(callbacks)
        self.nonfinite = nonfinite
        self.history = History()
        self.events = CallbackList([], self)
        self.stop_training = False
        self.global_step = 0  # batches trained, counted across resumes
        self.samples_seen = 0  # training samples, all processes together, counted across resumes
        self.epoch = 0  # the epoch being trained
        self.skipped_steps = 0  # optimizer steps of this epoch dropped for a non-finite loss
        self.interrupted = False  # all processes agreed to stop (see check_status)
        # a signal number, set from a signal handler (so: a plain assignment, nothing else);
        # acted on at the next status check, where all processes agree on it
        self.interrupt_requested: int = 0
        self.interrupt_signal: Optional[str] = None  # its name, once all processes agreed
        self._loss_window: list = []  # losses since the last status check, still on the device
        self._status_step = -1
        self._epoch_base_step = 0  # global step before the current epoch's first batch
        self._resume = None  # a mid-epoch checkpoint to continue from (train.checkpoint.Resume)
        self.flops_per_sample: Optional[float] = None  # measured on the first step
        self.steps_per_epoch = 0
        self.epochs_planned = (0, 0)  # first and last epoch of the current fit
        self._sums: Optional[EpochSums] = None
        self._loaders: dict[int, object] = {}

    # ------------------------------------------------------------------ small helpers
    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def prepare_loader(self, dl):
        """The loader sharded over processes and placed on the device (prepared once per loader)."""
        if dl is None or isinstance(dl, (DataLoaderShard, DataLoaderDispatcher)):
            return dl
        if id(dl) not in self._loaders:
            self._loaders[id(dl)] = (dl, self.accelerator.prepare(dl))  # keep dl alive: ids are reused
        return self._loaders[id(dl)][1]

    def to_device(self, *tensors):
        return tuple(t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in tensors)

    # --------------------------------------------------------------------- the steps
    def train_step(self, features, labels):
        """The one train step: forward, loss, backward, clip, optimizer step (every
        `gradient_accumulation_steps` batches), schedule. Returns the detached loss and
        predictions; reads nothing back from the device."""
        model, acc = self.model, self.accelerator
        if self.channels_last and features.dim() == 4:
            features = features.contiguous(memory_format=torch.channels_last)
        stepped = False
        with acc.accumulate(model):
            preds = model(features)
            loss = self.loss_func(preds, labels)
            acc.backward(loss)
            skip_check = self.nonfinite == "skip" and acc.scaler is None  # fp16's scaler skips by itself
            norm = None
            if acc.sync_gradients and (self.max_grad_norm is not None or skip_check):
                norm = acc.clip_grad_norm_(model.parameters(), self.max_grad_norm or float("inf"))
            if skip_check and norm is not None and not torch.isfinite(norm):
                # the gradients are already summed over processes, so every process drops this step
                self.skipped_steps += 1
            else:
                self.optimizer.step()  # the prepared optimizer skips the step while accumulating
                stepped = acc.sync_gradients
                if stepped and self.nonfinite == "skip" and getattr(self.optimizer, "step_was_skipped", False):
                    self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None and self.scheduler_interval == "step" and stepped:
            self.scheduler.step()
        return loss.detach(), preds.detach()

    @torch.no_grad()
    def eval_step(self, features, labels):
        """The one eval step: forward, then predictions and labels gathered from all processes
        (padding duplicates of the last batch dropped), then the loss over the gathered batch."""
        if self.channels_last and features.dim() == 4:
            features = features.contiguous(memory_format=torch.channels_last)
        preds = self.model(features)
        preds, labels = self.accelerator.gather_for_metrics((preds, labels))
        return self.loss_func(preds, labels), preds, labels

    # -------------------------------------------------------------------- the epochs
    def train_epoch(self, dl, epoch: int, events=None, log_step_freq: Optional[int] = None) -> dict:
        """One pass over `dl` (prepared); returns the epoch's averages over all processes, its
        wall time split into waiting for data and computing (the slowest process's, so every
        process has the same row), and samples/s."""
        events = events or self.events
        self.model.train()
        self.epoch = epoch
        self._sums = sums = EpochSums(self.metrics, self.device)
        self.skipped_steps = 0
        self.epoch_lr = self.optimizer.param_groups[0]["lr"]  # the history's lr: the epoch's first
        step, resume, self._resume = 0, self._resume, None
        if resume is not None:  # continue the epoch a checkpoint interrupted, at its next batch
            step = resume.position.step_in_epoch
            dl = self.accelerator.skip_first_batches(dl, step)
            dl.set_epoch(epoch - 1)
            sums.load_state(resume.sums["sums"])
            self.skipped_steps = resume.sums["skipped_steps"]
            self.epoch_lr = resume.sums["lr"]
        self._epoch_base_step = self.global_step - step
        data_s, sample, seen = 0.0, None, 0
        world = self.accelerator.num_processes
        start = time.perf_counter()
        batches = iter(dl)
        while True:
            wait = time.perf_counter()
            try:
                features, labels = next(batches)
            except StopIteration:
                break
            finally:
                if resume is not None and resume.rng is not None:
                    # the first `next` started the data iterator, which may draw from the global
                    # RNG; the uninterrupted run drew that at the epoch's start. Put back the
                    # states saved at the checkpoint, so dropout masks continue as they would have.
                    from .checkpoint import restore_rng

                    restore_rng(resume.rng)
                    resume = None
            data_s += time.perf_counter() - wait
            step += 1
            seen += labels.shape[0]
            self.global_step += 1
            self.samples_seen += labels.shape[0] * world
            if self.flops_per_sample is None and sample is None:
                sample = features[:1]  # for counting FLOPs once the timer has stopped
            loss, preds = self.train_step(features, labels)
            if self.nonfinite == "skip":
                if torch.isfinite(loss):  # a sync per step: the price of skipping
                    sums.add(loss, preds, labels)
            else:
                sums.add(loss, preds, labels)
                self._loss_window.append(loss)
            events.on_train_batch_end(step)
            if step % STATUS_EVERY == 0 or step == self.steps_per_epoch:
                self.check_status()
            if self.interrupted:
                events.on_interrupt(epoch, step)
                raise Preempted(f"stopped by {self.interrupt_signal} at epoch {epoch} step {step}")
            if log_step_freq and step % log_step_freq == 0:
                events.on_log(epoch, step, sums.running())  # a device sync, at log points only
            if self.stop_training:
                break
        seconds = time.perf_counter() - start
        self.check_status()
        if sample is not None:
            self._count_flops(sample)
        row = sums.result(self.accelerator)
        if world > 1:
            times = torch.tensor([seconds, data_s], device=self.device)
            seconds, data_s = self.accelerator.reduce(times, "max").tolist()
        # the same count on every process (even batches); a resumed epoch times its own part only
        samples = seen * world
        rate = samples / seconds if seconds > 0 else float("nan")
        row.update(lr=self.epoch_lr, epoch_s=seconds, data_s=data_s, compute_s=seconds - data_s, samples_per_s=rate)
        if self.flops_per_sample:
            row["flops_per_s"] = self.flops_per_sample * rate
        if self.nonfinite == "skip":
            row["skipped_steps"] = self.skipped_steps
        return row

    def check_status(self) -> None:
        """One collective at the same batch on every process: did a signal reach any of them,
        and was any loss since the last check NaN or infinite? Raises `NonFiniteLoss` naming the
        first such batch; sets `interrupted` for a signal. Reads back from the device."""
        if self._status_step == self.global_step:
            return
        self._status_step = self.global_step
        window, self._loss_window = self._loss_window, []
        flag = torch.tensor(float(self.interrupt_requested), dtype=torch.float64, device=self.device)
        first_bad = torch.tensor(-float("inf"), dtype=torch.float64, device=self.device)
        if window:  # negated global step of the first non-finite loss, so that "max" finds the earliest
            steps = torch.arange(self.global_step - len(window) + 1, self.global_step + 1,
                                 dtype=torch.float64, device=self.device)
            losses = torch.stack(window).to(torch.float64)
            first_bad = torch.where(torch.isfinite(losses), -float("inf"), -steps).max()
        status = torch.stack([flag, first_bad])
        if self.accelerator.num_processes > 1:
            status = self.accelerator.reduce(status, "max")
        interrupt, first_bad = status.tolist()
        if first_bad != -float("inf"):
            bad = int(-first_bad)
            raise NonFiniteLoss(f"the training loss became NaN or infinite at epoch {self.epoch} step "
                                f"{bad - self._epoch_base_step} (global step {bad}); lower optimizer.lr, set "
                                f"max_grad_norm, or set nonfinite=skip to drop such steps")
        if interrupt:
            import signal

            self.interrupted = True
            self.interrupt_signal = signal.Signals(int(interrupt)).name

    def partial_epoch_state(self) -> dict:
        """This process's share of the unfinished epoch, for a mid-epoch checkpoint."""
        return {"sums": self._sums.state(), "skipped_steps": self.skipped_steps, "lr": self.epoch_lr}

    def resume_from(self, resume) -> None:
        """Continue where a checkpoint (train.checkpoint.Resume) left off: the history of the
        finished epochs, the step counter and, for a mid-epoch checkpoint, the epoch's sums."""
        self.history = History(resume.history)
        self.global_step = resume.position.global_step
        self.samples_seen = resume.position.samples_seen
        self._status_step = self.global_step
        self._resume = resume if resume.position.step_in_epoch > 0 else None

    def _count_flops(self, sample) -> None:
        """FLOPs per training sample, counted once by torch's FLOP counter on a forward pass of
        one sample in eval mode (no RNG drawn, no gradients, outside the epoch timer), times 3 for
        forward + backward, the usual estimate. Ops the counter does not know count as 0."""
        from torch.utils.flop_counter import FlopCounterMode

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        self.flops_per_sample = 0.0
        try:
            with torch.no_grad(), self.accelerator.autocast(), FlopCounterMode(display=False) as counter:
                model.eval()
                model(sample)
            self.flops_per_sample = 3.0 * counter.get_total_flops()
        except Exception:  # a model the counter cannot trace (sharded, custom kernels): no figure
            pass
        finally:
            model.train()

    def running_logs(self) -> dict:
        """This process's running averages in the current epoch (a device sync; for progress lines)."""
        return self._sums.running() if self._sums is not None else {}

    def evaluate(self, dl, prefix: str = "val_") -> dict:
        """Loss and metrics over the whole of `dl`, exact across processes: `{prefix+name: value}`."""
        dl = self.prepare_loader(dl)
        self.model.eval()
        sums = EpochSums(self.metrics, self.device)
        for features, labels in dl:
            sums.add(*self.eval_step(features, labels))
        return {prefix + k: v for k, v in sums.result().items()}

    @torch.no_grad()
    def predict(self, dl) -> torch.Tensor:
        """Model outputs for every sample of `dl`, in its order, gathered from all processes."""
        dl = self.prepare_loader(dl)
        self.model.eval()
        outputs = []
        for batch in dl:
            features = batch[0] if isinstance(batch, (tuple, list)) else batch
            outputs.append(self.accelerator.gather_for_metrics(self.model(features)).cpu())
        return torch.cat(outputs)

    def fit(self, epochs: int, dl_train, dl_val=None, callbacks: Iterable = (),
            log_step_freq: Optional[int] = None):
        """Train for `epochs` epochs, validating after each; returns the history as a pandas
        DataFrame (the same on every process)."""
        if self.optimizer is None:
            raise ConfigError("no optimizer: pass one to compile() / Loop(...) before fit()")
        dl_train, dl_val = self.prepare_loader(dl_train), self.prepare_loader(dl_val)
        self.events = events = CallbackList([*self.callbacks, *callbacks], self)
        self.stop_training = self.interrupted = False
        first = len(self.history) + 1
        self.epochs_planned = (first, first + epochs - 1)
        self.steps_per_epoch = len(dl_train)
        events.on_train_begin()  # may set stop_training (a resumed run that had already stopped early)
        for epoch in range(first, first + epochs):
            if self.stop_training:
                break
            dl_train.set_epoch(epoch - 1)  # reshuffle: the order is a function of (seed, epoch)
            events.on_epoch_begin(epoch)
            train_row = self.train_epoch(dl_train, epoch, events, log_step_freq)
            row = {"epoch": epoch, **{k: v for k, v in train_row.items() if k in self.metrics or k == "loss"}}
            if dl_val is not None:
                row.update(self.evaluate(dl_val))
            row["lr"] = train_row["lr"]
            if "skipped_steps" in train_row:
                row["skipped_steps"] = train_row["skipped_steps"]
            row.update((k, train_row[k]) for k in TIMING_COLUMNS if k in train_row)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.history.append(row)
            events.on_epoch_end(epoch, row)
        events.on_train_end()
        return self.history.frame()

    def close(self) -> None:
        """Release the prepared objects and the process group (see `shutdown`)."""
        self._loaders.clear()
        shutdown(self.accelerator)
