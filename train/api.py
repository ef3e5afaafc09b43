"""The Keras-like class front: `Model(net)` with `summary`, `compile`, `fit`, `evaluate`, `predict`.

A thin front over `train.loop.Loop`; the tutorial's class-style cells run with only the import
line changed (`import train as torchkeras`, or `train.Model(...)`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from .callbacks import EpochTable, StepLog
from .errors import UserError
from .loop import Loop, make_accelerator
from .summary import summary as summary_table


class Model(nn.Module):
    """Wraps `net`; `model.parameters()` are the net's, so an optimizer can be built from them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise UserError(f"Model(net) expects a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self._loop: Optional[Loop] = None
        self._compiled: dict = {}

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def summary(self, input_shape, input_dtype=torch.float32) -> str:
        """Print and return the layer table for one sample of `input_shape`, e.g. `(1, 32, 32)`."""
        table = summary_table(self.net, input_shape, input_dtype)
        print(table)
        return table

    def compile(self, loss_func: Callable, optimizer: Optional[torch.optim.Optimizer] = None,
                metrics_dict: Optional[Mapping[str, object]] = None, lr_scheduler=None,
                scheduler_interval: str = "epoch", mixed_precision: Optional[str] = None,
                gradient_accumulation_steps: int = 1, max_grad_norm: Optional[float] = None,
                callbacks: Iterable = ()) -> None:
        """Set what `fit` trains with. `optimizer` defaults to Adam(lr=1e-3) over this model's
        parameters; `metrics_dict` maps names to `f(y_pred, y_true)`; `mixed_precision` None takes
        the launcher's setting."""
        if not callable(loss_func):
            raise UserError(f"compile(loss_func=...) expects a callable, got {type(loss_func).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise UserError(f"compile(optimizer=...) expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
        for name, fn in (metrics_dict or {}).items():
            if not callable(fn) and not hasattr(fn, "compute"):
                raise UserError(f"compile(metrics_dict=...): metric '{name}' expects a callable, got {type(fn).__name__}")
        if scheduler_interval not in ("epoch", "step"):
            raise UserError(f"compile(scheduler_interval=...) expects 'epoch' or 'step', got {scheduler_interval!r}")
        self.loss_func = loss_func
        self._compiled = dict(
            optimizer=optimizer or torch.optim.Adam(self.parameters(), lr=1e-3),
            metrics=dict(metrics_dict or {}), scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
            max_grad_norm=max_grad_norm, callbacks=list(callbacks),
            accelerator_args=dict(mixed_precision=mixed_precision,
                                  gradient_accumulation_steps=gradient_accumulation_steps))
        self._loop = None

    def _get_loop(self) -> Loop:
        if self._loop is None:
            if not self._compiled:
                raise UserError("call model.compile(loss_func=..., optimizer=...) before fit/evaluate/predict")
            c = self._compiled
            self._loop = Loop(self, c["optimizer"], self.loss_func, c["metrics"],
                              accelerator=make_accelerator(**c["accelerator_args"]), scheduler=c["scheduler"],
                              scheduler_interval=c["scheduler_interval"], max_grad_norm=c["max_grad_norm"],
                              callbacks=c["callbacks"])
        return self._loop

    def fit(self, epochs: int, dl_train, dl_val=None, log_step_freq: Optional[int] = None,
            callbacks: Iterable = ()):
        """Train; print the tutorial's step lines every `log_step_freq` steps and one table row per
        epoch. Returns the history DataFrame (`epoch, loss, <metric>, val_loss, val_<metric>, lr,
        epoch_s, samples_per_s`), identical on every process."""
        if not isinstance(epochs, int) or epochs < 0:
            raise UserError(f"fit(epochs=...) expects an int >= 0, got {epochs!r}")
        printers = [EpochTable()] + ([StepLog()] if log_step_freq else [])
        return self._get_loop().fit(epochs, dl_train, dl_val, [*printers, *callbacks], log_step_freq)

    def evaluate(self, dl_val) -> dict:
        """`{"val_loss": ..., "val_<metric>": ...}` over the whole of `dl_val`, exact across processes."""
        return self._get_loop().evaluate(dl_val)

    def predict(self, dl) -> torch.Tensor:
        """Outputs for every sample of `dl` in data set order (gathered, padding dropped), on the CPU."""
        return self._get_loop().predict(dl)

    @property
    def history(self):
        return self._get_loop().history.frame()
