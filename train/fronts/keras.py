"""The Keras-like class front: `Model(net)` with `summary`, `compile`, `fit`, `evaluate`, `predict`.

A thin front over `train.Run`: `compile` keeps the loss, optimizer, metrics and the step's options;
`fit` adds the run's options (an output folder, checkpoints, resume, trackers, seed, ...) and
trains through a `Run`. The tutorial's class-style cells run with only the import line changed
(`import train as torchkeras`, or `train.Model(...)`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from train.base.errors import RunError, UserError
from train.config.options import run_options
from train.fronts.summary import summary as print_summary

# what compile() takes besides the loss, optimizer, metrics, schedule and callbacks
STEP_OPTIONS = ("mixed_precision", "gradient_accumulation_steps", "max_grad_norm", "nonfinite", "compile",
                "channels_last", "tf32", "deterministic", "graphs",
                "strategy", "fsdp", "peak_tflops", "profile", "ema")


class Model(nn.Module):
    """Wraps `net`; `model.parameters()` are the net's, so an optimizer can be built from them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise UserError(f"Model(net) expects a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self._compiled: dict = {}
        self._run = None  # the Run of the last fit (or of evaluate/predict before any fit)
        self._state: Optional[dict] = None  # the loop's state after the last fit: history, counters

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def summary(self, input_shape, input_dtype=torch.float32) -> None:
        """Print the layer table for one sample of `input_shape`, e.g. `(1, 32, 32)` (returns
        nothing, as torchkeras' does: a shell shows it once; `train.fronts.summary.summary_text`
        gives the text)."""
        print_summary(self.net, input_shape, input_dtype)

    def compile(self, loss_func: Optional[Callable], optimizer: Optional[torch.optim.Optimizer] = None,
                metrics_dict: Optional[Mapping[str, object]] = None, lr_scheduler=None,
                scheduler_interval: str = "epoch", callbacks: Iterable = (), **step_options) -> None:
        """Set what `fit` trains with. `loss_func(y_pred, y_true)`, or None for the loss the model
        returns itself (a `transformers` model given dict batches holding `labels`). `optimizer`
        defaults to Adam(lr=1e-3) over this model's parameters; `metrics_dict` maps names to
        `f(y_pred, y_true)`. Step options:
        `mixed_precision` (None: the launcher's), `gradient_accumulation_steps`, `max_grad_norm`,
        `nonfinite` ("stop" or "skip"), `compile`, `channels_last`, `tf32`, `deterministic` (True:
        deterministic kernels, a resume bit-identical on a GPU too; False: cuDNN autotunes), `graphs`
        (True: the whole step replayed from one CUDA graph on a GPU; see the README), `strategy`
        ("ddp", or "fsdp": the model sharded over the processes), `fsdp` (its settings, a dict) and
        `peak_tflops` (one device's peak, for the history's `mfu`; known NVIDIA GPUs need none) and
        `profile` (e.g. {"steps": 5}: torch's profiler over 5 batches; see the README) and `ema`
        (e.g. {"decay": 0.999}: weights averaged after each optimizer step; see the README)."""
        if loss_func is not None and not callable(loss_func):
            raise UserError(f"compile(loss_func=...) expects a callable, or None for the model's own loss; got "
                            f"{type(loss_func).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise UserError(f"compile(optimizer=...) expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
        from train.engine.metrics import is_metric

        for name, fn in (metrics_dict or {}).items():
            if not is_metric(fn):
                raise UserError(f"compile(metrics_dict=...): metric '{name}' expects a callable, got {type(fn).__name__}")
        for key in step_options:
            if key not in STEP_OPTIONS:
                from train.base.text import did_you_mean

                raise UserError(f"compile() got an unknown option '{key}'; "
                                + did_you_mean(key, STEP_OPTIONS, otherwise=f"it takes {', '.join(STEP_OPTIONS)}"))
        run_options("compile()", **step_options)  # checks the values now, not at fit
        self.loss_func = loss_func
        self._compiled = dict(optimizer=optimizer or torch.optim.Adam(self.parameters(), lr=1e-3),
                              metrics=dict(metrics_dict or {}), scheduler=lr_scheduler,
                              scheduler_interval=scheduler_interval, callbacks=list(callbacks),
                              step_options=step_options)
        self._run = None

    def _new_run(self, **options):
        from train.service.run import Run

        if not self._compiled:
            raise UserError("call model.compile(loss_func=..., optimizer=...) before fit/evaluate/predict")
        c = self._compiled
        opts = run_options("fit()", **c["step_options"], name=type(self.net).__name__, **options)
        run = Run(self.net, c["optimizer"], self.loss_func, c["metrics"], scheduler=c["scheduler"],
                  scheduler_interval=c["scheduler_interval"], options=opts, callbacks=c["callbacks"])
        if self._state is not None:
            run.continue_from(self._state)  # a second fit continues the first one's epochs
        return run

    def fit(self, epochs: int, dl_train, dl_val=None, log_step_freq: Optional[int] = None,
            callbacks: Iterable = (), *, output_dir: Optional[str] = None, batch_size: Optional[str] = None,
            batch_find: Optional[dict] = None, **options):
        """Train until epoch `epochs` (a total: epochs trained by an earlier fit, or restored from a
        checkpoint, count); print the tutorial's step lines every `log_step_freq` batches and one
        table row per epoch. Returns the history DataFrame (`epoch, loss, <metric>, val_loss,
        val_<metric>, lr, ` timing columns), identical on every process.

        With `output_dir`, the run writes what the script writes there (`history.csv`,
        `history.png`, `model.safetensors`, `checkpoints/`), resumes from its newest intact
        checkpoint when run again (`resume="auto"`, or `"none"`, or a checkpoint path), saves and
        ends the process with exit 75 on SIGUSR1/SIGTERM and 130 on Ctrl-C. Other options, as in
        `train.RunOptions`: `checkpoint_every` (optimizer steps), `keep_last`, `seed`, `trackers`
        (("wandb", "tensorboard", "mlflow")), `early_stopping` (a column), `progress`, `collective_timeout_s`, ...

        `batch_size="auto"`: `dl_train` served again at the largest micro-batch that fits on every
        process (`batch_find`: `max`, `global_batch` kept through gradient accumulation, `steps`,
        `memory_fraction`; see the README's "Finding a batch size"); the model, optimizer and random
        generators are put back after the search.

        Errors: with `output_dir` the run owns its process, as the script does: a bad input ends it
        with one `error: ...` line and exit 2 (a NaN loss 3, a full disk 74; see the README's
        table), no traceback. Without it (a notebook) the typed exception (`train.UserError`, ...)
        is raised for the caller to handle.
        """
        try:
            run = self._new_run(output_dir=output_dir, log_step_freq=log_step_freq, step_lines=True, **options)
            self._run = run
            if batch_size is not None:
                dl_train = _at_found_size(run, dl_train, batch_size, batch_find or {}, output_dir)
            history = run.fit(epochs, dl_train, dl_val, callbacks).frame()
        except RunError as e:
            if output_dir is None:
                raise
            from train.supervision.reports import ended_by

            raise SystemExit(ended_by(e)) from None
        self._state = run.state()
        return history

    def _current_run(self):
        if self._run is None:
            self._run = self._new_run()
        return self._run

    def evaluate(self, dl_val) -> dict:
        """`{"val_loss": ..., "val_<metric>": ...}` over the whole of `dl_val`, exact across processes."""
        return self._current_run().evaluate(dl_val)

    def predict(self, dl) -> torch.Tensor:
        """Outputs for every sample of `dl` in data set order (gathered, padding dropped), on the CPU."""
        return self._current_run().predict(dl)

    def load_weights(self, path, checkpoint: Optional[str] = None) -> "Model":
        """Load the weights of a run (its folder, a checkpoint folder or a `.safetensors` file; with
        `checkpoint`, one of the run's checkpoints: `best`, `latest`, `step-...`) into this model's
        net; returns the model, ready for `predict` or `evaluate` after `compile`."""
        from train.saving.export import load_weights

        load_weights(self.net, path, checkpoint)
        return self

    @property
    def history(self):
        from train.engine.history import History

        return History(self._state["history"] if self._state else []).frame()


def _at_found_size(run, dl, batch_size, settings: dict, output_dir) -> "torch.utils.data.DataLoader":
    """fit(batch_size="auto"): the search on the run's own model, then `dl` served at the size found
    (its data set, sampler, collate and workers kept) and the accumulation that keeps a global batch."""
    from train.base.text import wrapped
    from train.fronts.batch_auto import loader_at

    from train.service.batch_find import refuse_sharded

    if batch_size != "auto":
        raise UserError(f"fit(batch_size=...) takes 'auto' (give any other size to your DataLoader); got {batch_size!r}")
    refuse_sharded(run.options.strategy)
    micro, accumulation, line = run.find_batch_size(dl.dataset, dl.collate_fn, settings,
                                                    run.accelerator.gradient_accumulation_steps)
    run.accelerator.gradient_accumulation_steps = run.options.gradient_accumulation_steps = accumulation
    if output_dir is not None:
        run.plan_notes.insert(0, line)
    elif run.is_main_process:
        print(wrapped(f"note: {line}"), flush=True)
    return loader_at(dl, micro)
