"""Checks made before a run writes anything, so that a mistake costs one line, not a traceback
half-way through the plan: a first real batch as the loader would make it, through the loop's
model, loss and metrics (`check_data`), a classifier's output width against its classes, labels at
padding positions, and the shapes in messages."""

from __future__ import annotations

import warnings

import torch

from train.base.errors import UserError, describe
from train.data.batches import call_model, model_output, shapes, split_batch
from train.data.nested import is_container, leaves
from train.data.rng import rng_untouched
from train.data.streams import first_samples, is_stream
from train.engine.metrics import is_stateful, per_batch
from train.engine.targets import IGNORE_INDEX

SAMPLES_LOOKED_AT = 32  # spread over the data set: enough to meet samples of different lengths


def is_classification_loss(loss) -> bool:
    """Whether a loss takes class indices as targets (cross entropy, negative log-likelihood)."""
    fn = getattr(loss, "func", loss)  # a functools.partial with the loss's arguments
    return isinstance(fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)) or fn in (
        torch.nn.functional.cross_entropy, torch.nn.functional.nll_loss)


def first_batch(dataset, collate):
    """A batch of two samples as the loader would make it: of different shapes where the first
    `SAMPLES_LOOKED_AT` spread over the set have them."""
    n = len(dataset)
    if n == 0:
        raise UserError("the training set is empty")
    spread = sorted({round(i * (n - 1) / max(1, SAMPLES_LOOKED_AT - 1)) for i in range(min(n, SAMPLES_LOOKED_AT))})
    from torch.utils.data import default_collate

    from train.data.loaders import batch_as_is

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
    """The shape of one sample of a batch (the batch dimension left out): `(1, 8, 8)`, or
    `{input_ids: (12,), attention_mask: (12,)}` for the leaves of a dict or a tuple."""
    def one(leaf) -> str:
        if torch.is_tensor(leaf):
            return str(tuple(leaf.shape[1:]) if leaf.dim() else ())
        return type(leaf).__name__

    if not is_container(item):
        return one(item)
    return "{" + ", ".join(f"{'.'.join(map(str, path))}: {one(leaf)}" for path, leaf in leaves(item)) + "}"


def check_data(loop, train, name: str, num_classes: int | None = None) -> list[str]:
    """A real batch of the training data through the collate, the model, the loss and each metric,
    on every process, in eval mode and without drawing from any RNG: two samples of different
    shapes where the data has them (one of the first and one spread over the set), else the first
    two. Raises `UserError` naming what does not fit. Skipped for data that cannot be indexed (an
    iterable data set). `num_classes`, for a classification loss, is checked against the model's
    output width. Returns warnings (things that run, but are likely a mistake)."""
    dataset = getattr(train, "dataset", None)
    if dataset is None or not (is_stream(dataset) or hasattr(dataset, "__getitem__")):
        return []
    acc = loop.accelerator
    model = acc.unwrap_model(loop.model, keep_torch_compile=False)
    was_training = model.training
    with rng_untouched():
        collate = getattr(train, "collate_fn", None)
        batch = first_batch(dataset, collate) if not is_stream(dataset) else \
            _collated(first_samples(dataset), collate)
        features, labels = split_batch(batch, loop.model_loss)
        features, labels = loop.to_device(features, labels)
        warnings_found = padding_with_labels(features, labels)
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
                    # torch's note that an op has no deterministic kernel (deterministic: true) is not
                    # a mistake of the loss (2-d cross-entropy on CUDA has none)
                    warnings.filterwarnings("ignore", message=r".* does not have a deterministic implementation")
                    loop.loss_func(preds, labels)
            except Exception as e:
                raise UserError(f"the loss cannot take model {name}'s output {shape_of(preds)} with the labels "
                                f"{shape_of(labels)}: {describe(e)}") from None
        for metric_name, metric in loop.metrics.items():
            if not is_stateful(metric) and not per_batch(metric):
                continue  # computed from the loss
            try:
                if is_stateful(metric):
                    metric.update(preds, labels)
                    metric.reset()
                else:
                    metric(preds, labels)
            except Exception as e:
                raise UserError(f"metric '{metric_name}' cannot take model {name}'s output {shape_of(preds)} with "
                                f"the labels {shape_of(labels)}: {describe(e)}") from None
    return warnings_found


def _collated(samples, collate):
    from torch.utils.data import default_collate

    try:
        return (collate or default_collate)(samples)
    except Exception as e:
        raise UserError(f"the collate function cannot batch the stream's first samples: {describe(e)}; set "
                        f"data.collate: pad for samples of different lengths, or give a collate function") from None


def padding_with_labels(features, labels) -> list[str]:
    """A warning when labels at padding positions (attention mask 0) are real ids: the loss would
    train on padding (labels padded by hand with the pad token instead of -100)."""
    mask = features.get("attention_mask") if isinstance(features, dict) else None
    if not (torch.is_tensor(mask) and torch.is_tensor(labels) and mask.shape == labels.shape):
        return []
    bad = int(((mask == 0) & (labels != IGNORE_INDEX)).sum())
    if not bad:
        return []
    return [f"{bad} label(s) of the first batch sit at padding positions (attention_mask 0) with real ids, so the "
            f"loss trains on padding; give them -100 there (data.collate: pad does)"]
