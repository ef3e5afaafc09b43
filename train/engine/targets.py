"""What a loss is averaged over: samples, or target tokens.

A *sample-level* loss (a classifier's, a regression's) is a mean over a batch's samples; the loop
weighs it by the batch's real samples, as it always has. A *token-level* loss (a language model's,
a token classifier's) is a mean over the batch's *target tokens*: the labels that are not
`IGNORE_INDEX` (-100, what padding and prompts get). Averaging per-batch means would weigh a batch
of short sequences as much as one of long ones, so for a token-level loss the loop counts the
targets of every batch and

- reports `sum of token losses / number of target tokens` over the whole epoch and all processes,
  whatever the batch size or the process count;
- trains each optimizer step on `sum of token losses / target tokens of the whole accumulated
  global batch` (each batch's mean times its count, over the global count: the loss the
  Transformers Trainer computes with `num_items_in_batch`), so that 2 processes x accumulation 2
  take the steps of 1 process with the whole batch.

Which it is: `loss: model` of a `transformers` causal, masked or token-classification model (by
its `loss_type`), or of a model of your own with integer labels of shape (batch, length), is
token-level, counting the labels the model's own loss counts (a causal language model shifts its
labels by one, as `transformers`' Trainer knows from the model's `loss_type`); a model says
otherwise with `token_level = False` (or `True`). A loss function with a `count(labels)` method
(`TokenCrossEntropy`, the built-in `token_cross_entropy`) is token-level by its count; anything
else is sample-level.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

IGNORE_INDEX = -100  # what torch's and transformers' cross entropy skip: padding, prompts


def loss_shifts_labels(model) -> bool:
    """Whether the model's own loss shifts its labels by one (a decoder predicting the next token):
    `transformers`' rule (its Trainer's `_loss_shifts_labels`): the loss its `loss_type` maps to is
    the causal one, and the model is no encoder-decoder; where `loss_type` is None, transformers
    uses the causal loss, and a model that generates text does. A model of your own says so with a
    `shifts_labels = True` attribute."""
    own = getattr(model, "shifts_labels", None)
    if own is not None:
        return bool(own)
    if not hasattr(model, "loss_type"):  # not a transformers model
        return False
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False  # its decoder is fed right-shifted inputs: labels are aligned with the outputs
    if model.loss_type is None:  # a name no loss matches (GPT2LMHeadModel): transformers falls back to the
        can_generate = getattr(model, "can_generate", None)  # causal loss, which a generating model uses
        return bool(can_generate and can_generate())
    return LOSS_MAPPING.get(model.loss_type) is ForCausalLMLoss


def count_targets(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """The number of target tokens in `labels` (a device tensor: no sync)."""
    if shift:
        labels = labels[..., 1:]
    return (labels != IGNORE_INDEX).sum()


def is_token_labels(labels) -> bool:
    """Integer labels with a value per token (batch, length, ...), not one per sample."""
    return torch.is_tensor(labels) and labels.dim() >= 2 and not labels.is_floating_point()


class TokenCrossEntropy:
    """Cross entropy over tokens: `logits` (batch, length, classes) against `labels` (batch,
    length), the mean over the labels that are not -100; `shift=True` scores position t against
    label t + 1 (a causal language model's next-token loss over logits you compute yourself). The
    built-in loss `token_cross_entropy` (`loss_args: {shift: true}`)."""

    def __init__(self, shift: bool = False, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0):
        self.shift, self.ignore_index, self.label_smoothing = shift, ignore_index, label_smoothing

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.shift:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=self.ignore_index,
                                                 label_smoothing=self.label_smoothing)

    def count(self, labels: torch.Tensor) -> torch.Tensor:
        if self.shift:
            labels = labels[..., 1:]
        return (labels != self.ignore_index).sum()


def token_level_model(model) -> bool:
    """Whether a model's own loss (`loss: model`) is a mean over target tokens: a `transformers`
    model whose loss is the causal, masked or token-classification one (not a segmentation or CTC
    loss, which average or ignore otherwise); a model of your own that says `token_level = True`,
    or has integer labels of two dimensions (batch, length) unless it says `token_level = False`."""
    own = getattr(model, "token_level", None)
    if own is not None:
        return bool(own)
    if not hasattr(model, "loss_type"):
        return True  # decided by the labels' shape
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss, ForMaskedLMLoss, ForTokenClassification

    if model.loss_type is None:
        can_generate = getattr(model, "can_generate", None)
        return bool(can_generate and can_generate())  # transformers' causal fallback
    return LOSS_MAPPING.get(model.loss_type) in (ForCausalLMLoss, ForMaskedLMLoss, ForTokenClassification)


def target_counter(model, loss_func) -> Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]]:
    """`labels -> number of targets` for a token-level loss (None for a batch whose labels are one
    per sample), or None when the loss is sample-level. `model` is the unwrapped model."""
    if loss_func is not None:
        count = getattr(loss_func, "count", None)
        return count if callable(count) else None
    if not token_level_model(model):
        return None
    shift, known = loss_shifts_labels(model), hasattr(model, "loss_type") or hasattr(model, "token_level")

    def count(labels):
        if not is_token_labels(labels) or (not known and labels.dim() != 2):
            return None
        return count_targets(labels, shift)
    return count


def loss_scales(window: list, accelerator) -> list:
    """For a window of rounds that ends in one optimizer step (`train.engine.rounds`, each with its
    `targets`): each batch's loss multiplier, so that the step trains on the sum of its losses over
    the targets of the whole global batch (also over the samples of a stream, whose last rounds are
    uneven). Nones for a sample-level loss of even batches, trained as Accelerate does (each
    batch's mean, averaged); one collective."""
    from train.engine.metrics import sum_dtype

    world, accumulation = accelerator.num_processes, accelerator.gradient_accumulation_steps
    counts = [r.targets for r in window]
    if all(c is None for c in counts) or world * accumulation == 1:
        return [None] * len(window)
    counts = [torch.as_tensor(c if c is not None else 0, device=accelerator.device) for c in counts]
    total = torch.stack(counts).sum()
    if world > 1:
        total = accelerator.reduce(total, "sum")
    # Accelerate divides each loss by the accumulation steps and DDP averages over processes
    factor = (world * accumulation) / total.clamp(min=1).to(sum_dtype(total.device))
    return [(c * factor).float() for c in counts]
