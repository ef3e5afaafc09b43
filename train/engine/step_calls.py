"""Two calls of the training step made directly where Accelerate's wrapper would only add host
work or kernels to them: on a GPU a small model's step is bound by what the host launches, so each
is time the GPU waits."""

from __future__ import annotations

import inspect

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType


def backward(accelerator: Accelerator, loss: torch.Tensor) -> None:
    """`accelerator.backward(loss)`, but where that is a plain `loss.backward()` after dividing the
    loss by the accumulation steps, and those are 1, the plain call: a division by 1 is a node in
    the graph and two more kernels a step (forward and backward), for the same bits."""
    plain = (accelerator.gradient_accumulation_steps == 1 and accelerator.scaler is None
             and not accelerator.has_lomo_optimizer
             and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM))
    if plain:
        loss.backward()
    else:
        accelerator.backward(loss)


def zero_grad_of(optimizer):
    """The call that drops the gradients (set to None) after an optimizer step: Accelerate's plain
    wrapper does it by calling the optimizer it wraps, after inspecting that optimizer's signature
    at every call; here it is inspected once. Other wrappers (DeepSpeed's) are called as they are.
    Call it only once gradients are in sync (the wrapper's own condition)."""
    if type(optimizer) is not AcceleratedOptimizer:
        return lambda: optimizer.zero_grad(set_to_none=True)
    inner = optimizer.optimizer
    if "set_to_none" in inspect.signature(inner.zero_grad).parameters:
        return lambda: inner.zero_grad(set_to_none=True)
    return inner.zero_grad
