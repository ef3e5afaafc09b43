"""Metrics: built-in metric functions and the per-epoch sums that make them exact.

Sums stay on the device and are read back only at log points and at the end of an epoch, so the
hot path never waits for the device. Metric functions are means over a batch's samples and are
weighted by its real samples; the loss is weighted by what it is a mean over: samples, or target
tokens for a token-level loss (`train.engine.targets`). Each process adds its own real rows (the padding
duplicates of uneven splits left out) and the sums are added over processes once at the end, so N
processes report the numbers of one. A metric derived from the loss (`perplexity`) is computed
from the epoch's loss, not per batch.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch

MetricFn = Callable[[torch.Tensor, torch.Tensor], object]


def accuracy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max class equals the label (a tensor; no device sync). In float64
    where the device has it, so that an epoch's accuracy is exact to ~1e-15 however it is batched."""
    hits = y_pred.argmax(dim=1) == y_true
    return hits.float().mean() if hits.device.type == "mps" else hits.double().mean()


def _errors(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Per-sample differences, in float64 where the device has it; (N, 1) predictions against (N,)
    targets are compared sample by sample, not broadcast into an N x N table."""
    dtype = torch.float32 if y_pred.device.type == "mps" else torch.float64
    y_pred, y_true = y_pred.to(dtype), y_true.to(dtype)
    if y_pred.dim() == y_true.dim() + 1 and y_pred.shape[-1] == 1:
        y_pred = y_pred.squeeze(-1)
    return (y_pred - y_true).reshape(len(y_true), -1)


def mae(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample (averaged over outputs), then over the batch."""
    return _errors(y_pred, y_true).abs().mean(dim=1).mean()


def mse(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample (averaged over outputs), then over the batch."""
    return _errors(y_pred, y_true).pow(2).mean(dim=1).mean()


class FromLoss:
    """A metric computed from the epoch's loss (over all its samples or target tokens, on every
    process), not from the predictions."""

    def __init__(self, fn, about: str):
        self.fn, self.about = fn, about

    def __repr__(self) -> str:
        return self.about


perplexity = FromLoss(lambda loss: math.exp(min(loss, 700.0)), "perplexity: exp of the epoch's token-level loss")

# each a mean over the batch's samples, so that sample-weighted sums make them exact over an epoch
METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "mae": mae, "mse": mse, "perplexity": perplexity}


def is_stateful(metric) -> bool:
    """A torchmetrics-style object (update/compute/reset): computed over the whole epoch."""
    return all(hasattr(metric, a) for a in ("update", "compute", "reset"))


def is_metric(metric) -> bool:
    """A function f(y_pred, y_true), a stateful object, or a metric derived from the loss."""
    return callable(metric) or hasattr(metric, "compute") or is_from_loss(metric)


def is_from_loss(metric) -> bool:
    return isinstance(metric, FromLoss)


def per_batch(metric) -> bool:
    """A metric function computed on each batch (not stateful, not derived from the loss)."""
    return not is_stateful(metric) and not is_from_loss(metric)


def sum_dtype(device) -> torch.dtype:
    """What sums are kept in: float64, so that sums over an epoch do not depend on the order of the
    batches; float32 on MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


class EpochSums:
    """Running sums of the loss and each metric over one epoch, on the device.

    Metric functions return a tensor (kept on the device) or a Python number (e.g. sklearn's
    accuracy_score; that one already synchronised); each is weighted by the batch's real samples.
    The loss is weighted by the same, or by `weight` (a device tensor: the batch's target tokens,
    for a token-level loss). Stateful metrics are updated per batch and computed at the end;
    metrics derived from the loss are computed from the epoch's loss.
    """

    def __init__(self, metrics: Mapping[str, object], device: torch.device):
        self.metrics = dict(metrics)
        self.names = ["loss", *self.metrics]
        # float64 so that sums over 60,000 samples do not depend on the order of the batches;
        # MPS has no float64
        self.dtype = sum_dtype(device)
        self.sums = torch.zeros(len(self.names), dtype=self.dtype, device=device)
        self.count = 0  # real samples
        self.loss_rows = 0  # samples of the batches whose loss is weighted by its samples
        self.loss_weights = torch.zeros((), dtype=self.dtype, device=device)  # targets of the others
        self._batch_metrics = [(i, fn) for i, fn in enumerate(self.metrics.values(), start=1) if per_batch(fn)]
        self._stateful = [m for m in self.metrics.values() if is_stateful(m)]
        for m in self._stateful:
            m.reset()
            if hasattr(m, "persistent"):  # torchmetrics: its states in state_dict(), for mid-epoch saves
                m.persistent(True)

    def add(self, loss: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor,
            weight: Optional[torch.Tensor] = None, stateful: bool = True) -> None:
        """One batch: `loss` its mean, `preds` and `labels` its real rows. `stateful=False` leaves the
        stateful metrics to `update_stateful` (evaluation updates them with every process's rows)."""
        self.count_rows(labels.shape[0], weight)
        if stateful:
            self.update_stateful(preds, labels)
        self.accumulate(loss, preds, labels, weight)

    def count_rows(self, n: int, weight: Optional[torch.Tensor] = None) -> None:
        """The host's part of `add`: a batch of `n` real rows (and `weight` targets) counted."""
        self.count += n
        if weight is None:
            self.loss_rows += n
        else:
            self.loss_weights += weight

    def accumulate(self, loss: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor,
                   weight: Optional[torch.Tensor] = None) -> None:
        """The device's part of `add` (no host value read or changed, so a CUDA graph can hold it): the
        loss and the metric functions added to the sums in place."""
        n = labels.shape[0]
        if weight is not None:  # a batch without targets adds nothing (its mean is 0 / 0)
            loss = torch.where(weight > 0, loss.detach(), loss.new_zeros(()))
        # detached only where they are not: on a GPU each detach() is a dispatched op
        values, idx = [loss.detach() if loss.requires_grad else loss], [0]
        for i, fn in self._batch_metrics:
            v = fn(preds, labels)
            if torch.is_tensor(v):
                values.append(v.detach() if v.requires_grad else v)
                idx.append(i)
            else:  # a host number: add it straight in (passed as a scalar argument, no sync)
                self.sums[i] += float(v) * n
        # one multiply-add for all tensor values instead of one per metric
        stacked = torch.stack([v.to(self.dtype) for v in values])
        if weight is not None:
            stacked = stacked * torch.cat([weight.reshape(1).to(self.dtype), stacked.new_full((len(idx) - 1,), n)])
            weight_all = 1
        else:
            weight_all = n
        if len(idx) == len(self.names):
            self.sums.add_(stacked, alpha=weight_all)
        else:
            self.sums[idx] += stacked * weight_all

    def reset(self) -> "EpochSums":
        """Zeroed for a new epoch in place (a captured step keeps adding into the same tensors)."""
        self.sums.zero_()
        self.loss_weights.zero_()
        self.count = self.loss_rows = 0
        for m in self._stateful:
            m.reset()
        return self

    def update_stateful(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        for m in self._stateful:
            m.update(preds, labels)

    def state(self) -> dict:
        """The sums so far, on the CPU (for a mid-epoch checkpoint), and the state of each stateful
        metric that has `state_dict()` (one without covers only the rest of an epoch resumed
        mid-way)."""
        metrics = {name: m.state_dict() for name, m in self.metrics.items()
                   if is_stateful(m) and hasattr(m, "state_dict") and hasattr(m, "load_state_dict")}
        return {"sums": self.sums.cpu(), "count": self.count, "metrics": metrics, "loss_rows": self.loss_rows,
                "loss_weights": self.loss_weights.cpu()}

    @staticmethod
    def merged_state(states: list, keep: bool) -> dict:
        """The saved sums of several processes (`state()`) added into one (`keep`: this process
        continues them all), or zeroed (another process of a run resumed on a new process count).
        Stateful metrics cannot be merged: the caller refuses such a resume."""
        first = states[0]
        merged = {key: sum(s.get(key, s["count"] if key == "loss_rows" else 0) for s in states) if keep
                  else first[key] * 0 for key in ("sums", "count", "loss_rows", "loss_weights") if key in first}
        return {**merged, "metrics": {}}

    def load_state(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])
        self.loss_rows = int(state.get("loss_rows", self.count))  # checkpoints before token-level losses
        if "loss_weights" in state:
            self.loss_weights.copy_(state["loss_weights"])
        for name, saved in state.get("metrics", {}).items():
            if name in self.metrics:
                self.metrics[name].load_state_dict(saved)

    def _means(self, totals: list[float], count: float, loss_weight: float) -> dict[str, float]:
        out = {}
        for i, (name, value) in enumerate(zip(self.names, totals)):
            out[name] = value / max(loss_weight if i == 0 else count, 1)
        for name, m in self.metrics.items():
            if is_from_loss(m):
                out[name] = m.fn(out["loss"])
        return out

    def running(self) -> dict[str, float]:
        """This process's averages so far (a device sync: call at log points only)."""
        totals = torch.cat([self.sums, (self.loss_weights + self.loss_rows).reshape(1)]).tolist()
        means = self._means(totals[:-1], self.count, totals[-1])
        return {k: v for k, v in means.items() if not is_stateful(self.metrics.get(k))}

    def result(self, accelerator=None) -> dict[str, float]:
        """Averages over the epoch: the sums added over all processes first (one collective), when
        `accelerator` runs several."""
        totals = torch.cat([self.sums, torch.tensor([float(self.count)], dtype=self.dtype, device=self.sums.device),
                            (self.loss_weights + self.loss_rows).reshape(1)])
        if accelerator is not None and accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        values = totals.tolist()
        out = self._means(values[:-2], values[-2], values[-1])
        for k, m in self.metrics.items():
            if is_stateful(m):
                out[k] = float(m.compute())
        return out
