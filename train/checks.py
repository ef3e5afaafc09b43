"""Checks made before a run writes anything, so that a mistake costs one line, not a traceback
half-way through the plan."""

from __future__ import annotations

import warnings

import torch

from .errors import UserError, describe
from .loop import call_model
from .metrics import is_stateful
from .rng import rng_untouched


def model_takes_data(loop, train, name: str) -> None:
    """One training sample through the model, the loss and each metric, on every process, in eval
    mode and without drawing from any RNG. Raises `UserError` naming the model, the input's shape
    and torch's message. Skipped for data that cannot be indexed (an iterable data set)."""
    dataset = getattr(train, "dataset", None)
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return
    acc = loop.accelerator
    model = acc.unwrap_model(loop.model, keep_torch_compile=False)
    was_training = model.training
    with rng_untouched():
        features, labels = dataset[0]
        features, labels = loop.to_device(batch_of_one(features), batch_of_one(labels))
        try:
            with torch.no_grad(), acc.autocast():
                model.eval()
                preds = call_model(model, loop.layout(features))
        except Exception as e:
            raise UserError(f"model {name} cannot take the training data: an input of shape "
                            f"{shape_of(features)} gives {describe(e)}") from None
        finally:
            model.train(was_training)
        try:
            with warnings.catch_warnings():  # e.g. MSE of (N, 10) against (N,): torch only warns, then broadcasts
                warnings.simplefilter("error", UserWarning)
                loop.loss_func(preds, labels)
        except Exception as e:
            raise UserError(f"the loss cannot take model {name}'s output {shape_of(preds)} with the labels "
                            f"{shape_of(labels)}: {describe(e)}") from None
        for metric_name, metric in loop.metrics.items():
            try:
                if is_stateful(metric):
                    metric.update(preds, labels)
                    metric.reset()
                else:
                    metric(preds, labels)
            except Exception as e:
                raise UserError(f"metric '{metric_name}' cannot take model {name}'s output {shape_of(preds)} with "
                                f"the labels {shape_of(labels)}: {describe(e)}") from None


def batch_of_one(item):
    """A data set's sample as a batch of one: tensors get a leading dimension, numbers become tensors."""
    if torch.is_tensor(item):
        return item.unsqueeze(0)
    if isinstance(item, dict):
        return {k: batch_of_one(v) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        return type(item)(batch_of_one(v) for v in item)
    return torch.as_tensor([item])


def shape_of(item) -> str:
    """The shape of one sample of a batch (the batch dimension left out)."""
    if torch.is_tensor(item):
        return str(tuple(item.shape[1:]) if item.dim() else ())
    if isinstance(item, dict):
        return "{" + ", ".join(f"{k}: {shape_of(v)}" for k, v in item.items()) + "}"
    if isinstance(item, (tuple, list)):
        return "(" + ", ".join(shape_of(v) for v in item) + ")"
    return type(item).__name__
