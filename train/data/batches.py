"""The data and model contract: what a sample, a batch and a model's output may be, and the one
adapter that turns each form into what the loop, the metrics and the checks use.

- A sample is `(input, target)`, or a dict holding `labels` (or `label`): a `datasets` row or a
  tokenizer's output. An input is a tensor, a tuple of tensors (`model(*x)`) or a dict (`model(**x)`).
- A batch is made by a collate: torch's stacking one (samples of one shape), `pad_collate` (samples
  of different lengths, padded along their first dimension), or the user's.
- A model returns a tensor, a tuple or list (first element = predictions), or a dict / a
  `transformers` `ModelOutput` (`logits` = predictions, `loss` = the model's own loss).

`split_batch` gives (inputs, targets); `model_output` gives (predictions, own loss). Nothing else
needs to know which form it got. This module knows nothing of the loop or of files.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from train.data.nested import apply, leaves, merge, tensors
from train.base.errors import UserError

LABEL_KEYS = ("labels", "label")  # the `transformers` name first; `datasets` rows often say `label`


def call_model(model, features):
    """The model on one batch's inputs: a tensor, a tuple of tensors (`model(*x)`) or a dict (`model(**x)`)."""
    if isinstance(features, dict):
        return model(**features)
    if isinstance(features, (tuple, list)):
        return model(*features)
    return model(features)


def split_batch(batch, model_loss: bool = False):
    """(inputs, targets) of a batch. A dict batch's `labels` (or `label`) is the target; it stays
    in the inputs (as `labels`) when the model computes its own loss (`model_loss`), as
    `transformers` models expect, and is taken out otherwise."""
    if isinstance(batch, dict):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            raise UserError(f"a dict sample needs a 'labels' key (the target); got keys {', '.join(batch)}")
        inputs = {k: v for k, v in batch.items() if k != key}
        if model_loss:
            inputs["labels"] = batch[key]
        return inputs, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise UserError(f"a sample must be (input, target) or a dict holding 'labels'; got {describe_value(batch)}")


def prediction_inputs(batch):
    """The inputs of a batch for prediction: its first element, its dict without the target, or
    the batch itself (inputs alone)."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    return batch


def model_output(output, model_name: str = "the model") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(predictions, the model's own loss or None) of what a model returned."""
    if torch.is_tensor(output):
        return output, None
    if isinstance(output, dict):  # a transformers ModelOutput is an OrderedDict
        loss = output.get("loss")
        if "logits" in output and torch.is_tensor(output["logits"]):
            return output["logits"], loss
        preds = next((v for k, v in output.items() if k != "loss" and torch.is_tensor(v)), None)
        if preds is not None:
            return preds, loss
    elif isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0], None
    raise UserError(f"{model_name} returned {describe_value(output)}; return a tensor, a tuple (first = "
                    f"predictions) or a dict / ModelOutput with 'logits' (and 'loss' for loss: model)")


def describe_value(value) -> str:
    if isinstance(value, dict):
        return f"a {type(value).__name__} with keys {', '.join(map(str, value))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


# -------------------------------------------------------------------------------- collates
def batch_rows(inputs) -> int:
    """The number of samples in a batch's inputs: its first tensor's first dimension."""
    for leaf in tensors(inputs):
        if leaf.dim() > 0:
            return leaf.shape[0]
    raise UserError(f"a batch's inputs hold no tensor: {describe_value(inputs)}")


def shapes(sample) -> tuple:
    """The shapes of a sample's tensors (lists as 1-d), in order: equal for samples that stack."""
    out = []
    for _, leaf in leaves(sample):
        if torch.is_tensor(leaf):
            out.append(tuple(leaf.shape))
        elif isinstance(leaf, list):
            out.append((len(leaf),))
    return tuple(out) if len(out) != 1 else out[0]


def sample_length(sample) -> int:
    """The length of a variable-length sample: its longest first dimension (tokens of a sequence)."""
    if isinstance(sample, dict) and "input_ids" in sample:
        return len(sample["input_ids"])
    lengths = [len(leaf) if isinstance(leaf, list) else leaf.shape[0] for _, leaf in leaves(sample)
               if (torch.is_tensor(leaf) and leaf.dim() > 0) or isinstance(leaf, list)]
    return max(lengths, default=1)


class PadCollate:
    """Pads every variable-length tensor of a sample (a tensor, each member of a tuple, each value
    of a dict) along its first dimension to the batch's longest, then stacks: with `pad_value`
    for tensors, tuple members and `input_ids`, with 0 for a dict's other keys (attention masks,
    token type ids, whose 0 is always valid).
    Targets of different lengths (`labels`, or the second member of `(input, target)`) are padded
    with -100 (the index that `transformers`' and torch's cross entropy ignore).
    A dict holding `input_ids` and no `attention_mask` gets one (1 for tokens, 0 for padding), as
    `transformers`' `DataCollatorWithPadding` gives. A class, not a closure: loader workers pickle it."""

    def __init__(self, pad_value: float = 0):
        self.pad_value = pad_value

    def __call__(self, samples: list):
        first = samples[0]
        if isinstance(first, dict) and "input_ids" in first and "attention_mask" not in first:
            samples = [{**s, "attention_mask": torch.ones(len(s["input_ids"]), dtype=torch.long)} for s in samples]
        return merge(self._stack, samples)

    def _stack(self, values: list, path: tuple):
        """One leaf of every sample as one batched tensor (or a list of strings)."""
        first = values[0]
        if isinstance(first, str):
            return list(values)
        tensors = [v if torch.is_tensor(v) else torch.as_tensor(v) for v in values]
        if all(t.shape == tensors[0].shape for t in tensors):
            return torch.stack(tensors)
        is_target = path == (1,) or (path and path[-1] in LABEL_KEYS)  # (input, target), or a dict's labels
        other_key = path and isinstance(path[-1], str) and path[-1] != "input_ids"  # masks, token types: 0
        pad = -100 if is_target else 0 if other_key else self.pad_value
        longest = max(t.shape[0] for t in tensors)
        out = tensors[0].new_full((len(tensors), longest, *tensors[0].shape[1:]), pad)
        for i, t in enumerate(tensors):
            out[i, :t.shape[0]] = t
        return out


def pad_collate(samples: list, pad_value: float = 0) -> Any:
    """`PadCollate(pad_value)(samples)`."""
    return PadCollate(pad_value)(samples)


def take_rows(inputs, n: int):
    """The first `n` samples of a batch's inputs (a tensor, a tuple or a dict of tensors)."""
    return apply(lambda t: t[:n] if t.dim() > 0 else t, inputs)
