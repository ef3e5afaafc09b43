"""Metrics: built-in metric functions and the per-epoch sums that make them exact.

Sums stay on the device (sample-weighted: value x batch size) and are read back only at log points
and at the end of an epoch, so the hot path never waits for the device. Evaluation gathers each
batch with `gather_for_metrics`, which drops the padding duplicates of uneven splits, so N
processes report the numbers of one.
"""

from __future__ import annotations

from typing import Callable, Mapping

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


# each a mean over the batch's samples, so that sample-weighted sums make them exact over an epoch
METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "mae": mae, "mse": mse}


def is_stateful(metric) -> bool:
    """A torchmetrics-style object (update/compute/reset): computed over the whole epoch."""
    return all(hasattr(metric, a) for a in ("update", "compute", "reset"))


class EpochSums:
    """Sample-weighted running sums of the loss and each metric over one epoch, on the device.

    Metric functions return a tensor (kept on the device) or a Python number (e.g. sklearn's
    accuracy_score; that one already synchronised). Stateful metrics are updated per batch and
    computed at the end.
    """

    def __init__(self, metrics: Mapping[str, object], device: torch.device):
        self.metrics = dict(metrics)
        self.names = ["loss", *self.metrics]
        # float64 so that sums over 60,000 samples do not depend on the order of the batches;
        # MPS has no float64
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.sums = torch.zeros(len(self.names), dtype=self.dtype, device=device)
        self.count = 0
        for m in self.metrics.values():
            if is_stateful(m):
                m.reset()
                if hasattr(m, "persistent"):  # torchmetrics: its states in state_dict(), for mid-epoch saves
                    m.persistent(True)

    def add(self, loss: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.count += n
        values = [loss.detach()]
        for i, fn in enumerate(self.metrics.values(), start=1):
            if is_stateful(fn):
                fn.update(preds, labels)
                values.append(None)
                continue
            v = fn(preds, labels)
            if torch.is_tensor(v):
                values.append(v.detach())
            else:  # a host number: add it straight in (passed as a scalar argument, no sync)
                self.sums[i] += float(v) * n
                values.append(None)
        # one multiply-add for all tensor values instead of one per metric
        idx = [i for i, v in enumerate(values) if v is not None]
        stacked = torch.stack([values[i].to(self.dtype) for i in idx])
        if len(idx) == len(values):
            self.sums.add_(stacked, alpha=n)
        else:
            self.sums[idx] += stacked * n

    def state(self) -> dict:
        """The sums so far, on the CPU (for a mid-epoch checkpoint), and the state of each stateful
        metric that has `state_dict()` (one without covers only the rest of an epoch resumed
        mid-way)."""
        metrics = {name: m.state_dict() for name, m in self.metrics.items()
                   if is_stateful(m) and hasattr(m, "state_dict") and hasattr(m, "load_state_dict")}
        return {"sums": self.sums.cpu(), "count": self.count, "metrics": metrics}

    def load_state(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])
        for name, saved in state.get("metrics", {}).items():
            if name in self.metrics:
                self.metrics[name].load_state_dict(saved)

    def running(self) -> dict[str, float]:
        """This process's averages so far (a device sync: call at log points only)."""
        means = (self.sums / max(1, self.count)).tolist()
        return {k: v for k, v in zip(self.names, means) if not is_stateful(self.metrics.get(k))}

    def result(self, accelerator=None) -> dict[str, float]:
        """Averages over the epoch. With `accelerator`, sums are added over all processes first
        (one collective); without it, the sums are taken as already global (gathered batches)."""
        totals = torch.cat([self.sums, torch.tensor([float(self.count)], dtype=self.dtype,
                                                    device=self.sums.device)])
        if accelerator is not None and accelerator.num_processes > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        values = (totals[:-1] / totals[-1].clamp(min=1)).tolist()
        out = dict(zip(self.names, values))
        for k, m in self.metrics.items():
            if is_stateful(m):
                out[k] = float(m.compute())
        return out
