"""The function front, in the tutorial's style: the model carries `optimizer`, `loss_func`,
`metric_func` and `metric_name`; `train_step`, `valid_step` and `train_model` drive the one loop."""

from __future__ import annotations

from .callbacks import EpochTable, StepLog
from .errors import UserError
from .loop import Loop


def _loop_for(model) -> Loop:
    """The `Loop` behind `model`, built on first use from the attributes the model carries."""
    loop = model.__dict__.get("_functional_loop")
    if loop is None or loop.optimizer.optimizer is not model.optimizer:
        missing = [a for a in ("optimizer", "loss_func", "metric_func", "metric_name") if not hasattr(model, a)]
        if missing:
            raise UserError(f"the model needs the attribute(s) {', '.join(missing)} "
                            f"(e.g. model.optimizer = torch.optim.Adam(model.parameters()))")
        loop = Loop(model, model.optimizer, model.loss_func, {model.metric_name: model.metric_func})
        model.__dict__["_functional_loop"] = loop
    return loop


def _metric(loop: Loop, preds, labels) -> float:
    name, fn = next(iter(loop.metrics.items()))
    return float(fn(preds, labels))


def train_step(model, features, labels) -> tuple[float, float]:
    """One optimizer step on one batch; returns (loss, metric) as numbers."""
    loop = _loop_for(model)
    loop.model.train()
    features, labels = loop.to_device(features, labels)
    loss, preds = loop.train_step(features, labels)
    return float(loss), _metric(loop, preds, labels)


def valid_step(model, features, labels) -> tuple[float, float]:
    """Loss and metric of one batch without training; returns (loss, metric) as numbers."""
    loop = _loop_for(model)
    loop.model.eval()
    loss, preds, labels = loop.eval_step(*loop.to_device(features, labels))
    return float(loss), _metric(loop, preds, labels)


def train_model(model, epochs: int, dl_train, dl_valid=None, log_step_freq: int = 100):
    """Train for `epochs` epochs; prints step lines and an epoch table; returns the history DataFrame."""
    loop = _loop_for(model)
    return loop.fit(epochs, dl_train, dl_valid, [EpochTable(), StepLog()], log_step_freq)
