"""Checks made before a run writes anything, so that a mistake costs one line, not a traceback
half-way through the plan."""

from __future__ import annotations

import warnings

import torch

from .batches import call_model, model_output, shapes, split_batch
from .errors import UserError, describe
from .metrics import is_stateful
from .rng import rng_untouched

SAMPLES_LOOKED_AT = 32  # spread over the data set: enough to meet samples of different lengths


def is_classification_loss(loss) -> bool:
    """Whether a loss takes class indices as targets (cross entropy, negative log-likelihood)."""
    fn = getattr(loss, "func", loss)  # a functools.partial with the loss's arguments
    return isinstance(fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)) or fn in (
        torch.nn.functional.cross_entropy, torch.nn.functional.nll_loss)


def model_takes_data(loop, train, name: str, num_classes: int | None = None) -> None:
    """A real batch of the training data through the collate, the model, the loss and each metric,
    on every process, in eval mode and without drawing from any RNG: two samples of different
    shapes where the data has them (one of the first and one spread over the set), else the first
    two. Raises `UserError` naming what does not fit. Skipped for data that cannot be indexed (an
    iterable data set). `num_classes`, for a classification loss, is checked against the model's
    output width."""
    dataset = getattr(train, "dataset", None)
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return
    acc = loop.accelerator
    model = acc.unwrap_model(loop.model, keep_torch_compile=False)
    was_training = model.training
    with rng_untouched():
        batch = first_batch(dataset, getattr(train, "collate_fn", None))
        features, labels = split_batch(batch, loop.model_loss)
        features, labels = loop.to_device(features, labels)
        try:
            with torch.no_grad(), acc.autocast():
                model.eval()
                output = call_model(model, loop.layout(features))
        except Exception as e:
            raise UserError(f"model {name} cannot take the training data: an input of shape "
                            f"{shape_of(features)} gives {describe(e)}") from None
        finally:
            model.train(was_training)
        preds, own_loss = model_output(output, f"model {name}")
        if loop.model_loss:
            if own_loss is None:
                raise UserError(f"loss: model, but model {name} returned no 'loss'; give it the labels (dict samples "
                                f"holding 'labels') or choose a loss function")
        else:
            check_classes(loop.loss_func, preds, labels, name, num_classes)
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


def first_batch(dataset, collate):
    """A batch of two samples as the loader would make it: of different shapes where the first
    `SAMPLES_LOOKED_AT` spread over the set have them."""
    n = len(dataset)
    if n == 0:
        raise UserError("the training set is empty")
    spread = sorted({round(i * (n - 1) / max(1, SAMPLES_LOOKED_AT - 1)) for i in range(min(n, SAMPLES_LOOKED_AT))})
    from torch.utils.data import default_collate

    from .data import batch_as_is

    if collate is batch_as_is:  # the fast path: the data set cuts whole batches by indexing (train.data)
        return dataset.__getitems__(spread[:2])
    first = dataset[0]
    other = next((s for s in (dataset[i] for i in spread[1:]) if shapes(s) != shapes(first)), None)
    samples = [first, other if other is not None else dataset[spread[1]] if len(spread) > 1 else first]
    try:
        return (collate or default_collate)(samples)
    except Exception as e:
        if other is not None and (collate is None or collate is default_collate):
            raise UserError(f"training samples have different shapes ({shapes(first)} and {shapes(other)}); "
                            f"set data.collate: pad or give a collate function") from None
        raise UserError(f"the collate function cannot batch the training samples ({shapes(samples[0])} and "
                        f"{shapes(samples[1])}): {describe(e)}") from None


def check_classes(loss, preds, labels, name: str, num_classes: int | None) -> None:
    """For a classification loss: integer targets, and a model output as wide as the classes."""
    if not is_classification_loss(loss) or not torch.is_tensor(labels) or preds.dim() < 2:
        return
    if labels.is_floating_point() and labels.dim() == preds.dim() - 1:
        raise UserError("the targets are floating point but the loss expects class indices; use a regression loss "
                        "(loss=mse) or integer labels")
    width = preds.shape[1]
    if num_classes is not None and width != num_classes:
        raise UserError(f"model {name} outputs {width} classes but data.num_classes={num_classes}; make them agree "
                        f"(the model's output layer, or data.num_classes)")
    if not labels.is_floating_point() and labels.numel() and int(labels.max()) >= width:
        raise UserError(f"the labels reach {int(labels.max())} but model {name} outputs {width} classes; give the "
                        f"model {int(labels.max()) + 1} outputs or fix the labels")


def shape_of(item) -> str:
    """The shape of one sample of a batch (the batch dimension left out)."""
    if torch.is_tensor(item):
        return str(tuple(item.shape[1:]) if item.dim() else ())
    if isinstance(item, dict):
        return "{" + ", ".join(f"{k}: {shape_of(v)}" for k, v in item.items()) + "}"
    if isinstance(item, (tuple, list)):
        return "(" + ", ".join(shape_of(v) for v in item) + ")"
    return type(item).__name__
