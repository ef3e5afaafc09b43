"""Checks made before a run writes anything, so that a mistake costs one line, not a traceback
half-way through the plan: a first real batch as the loader would make it, a classifier's output
width against its classes, and the shapes in messages. The loop runs the batch through the model
(`Loop.check_data`)."""

from __future__ import annotations

import torch

from train.data.nested import is_container, leaves
from train.data.batches import shapes
from train.base.errors import UserError, describe

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
