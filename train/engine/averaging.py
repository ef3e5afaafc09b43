"""Weight averaging (`ema:`): an exponential moving average of the weights, kept beside the model.

After each optimizer step from `start_step` on, every `every_n_steps` steps, each trained
parameter and floating-point buffer `p` of the model updates its average `a` as `a = decay * a + (1 - decay) * p`
(one `torch._foreach_lerp_` over all of them: a few kernels, no read of the device). Before
`start_step` the average follows the weights (a copy). With `warmup`, the decay grows as timm's
`ModelEmaV3` grows it: `min(decay, 1 - (1 + n) ** (-2/3))` after n updates, so that the first
updates do not keep the random start. Integer buffers (BatchNorm's batch count) are copied.

The averages live on the model's device, in the model's dtype; validation, prediction and the
exported `model.safetensors` use them (`swapped_in`), and every checkpoint holds them (a part with
the state key `ema`), so a resume is bit-exact. Written by hand rather than with
`torch.optim.swa_utils.AveragedModel`: that one keeps a second module (a deep copy, wrapped models
and hooks included) and counts its updates in a buffer the checkpoint would have to know about;
here the averages are plain tensors beside the model's own.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from train.base.errors import UserError
from train.config.options import checked_ema

LOW_PRECISION = (torch.bfloat16, torch.float16)  # weights kept in these are averaged in float32


class WeightAverage:
    state_key = "ema"

    def __init__(self, model: torch.nn.Module, decay: float, every_n_steps: int = 1, start_step: int = 0,
                 warmup: bool = False, validate: str = "averaged"):
        """Settings as `train.config.options.checked_ema` checks them (`weight_average` does)."""
        self.decay, self.every, self.start, self.warmup, self.validate = decay, every_n_steps, start_step, warmup, validate
        # frozen parameters (a pretrained base under adapters) never change: their average is themselves
        named = [(n, t) for n, t in model.named_parameters() if t.requires_grad] + list(model.named_buffers())
        if any(type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter for _, t in named):
            raise UserError("ema does not average sharded weights yet (strategy=fsdp); use strategy=ddp with ema")
        self.names = [name for name, t in named if t.is_floating_point()]
        self.weights = [t for _, t in named if t.is_floating_point()]
        self.counts = [t for _, t in named if not t.is_floating_point()]  # copied at each update
        # bf16/fp16 weights: a step of (1 - decay) x difference would round away in their precision
        self.averages = [t.detach().clone().float() if t.dtype in LOW_PRECISION else t.detach().clone()
                         for t in self.weights]
        self.count_copies = [t.detach().clone() for t in self.counts]
        self.updates = 0  # averaging updates since start_step

    def decay_now(self) -> float:
        """The decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + self.updates) ** (-2.0 / 3.0))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """After optimizer step `step` (counted from 1): follow, update or wait."""
        weights = [w.float() if w.dtype != a.dtype else w for w, a in zip(self.weights, self.averages)]
        if step < self.start:
            torch._foreach_copy_(self.averages, weights)
        elif (step - self.start) % self.every == 0:
            torch._foreach_lerp_(self.averages, weights, 1.0 - self.decay_now())
            self.updates += 1
        else:
            return
        if self.counts:
            torch._foreach_copy_(self.count_copies, self.counts)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """The model holds the averages inside the block (its own weights put back after it)."""
        kept = [t.detach().clone() for t in self.weights]
        kept_counts = [t.detach().clone() for t in self.counts]
        torch._foreach_copy_(self.weights, self.averages)
        if self.counts:
            torch._foreach_copy_(self.counts, self.count_copies)
        try:
            yield
        finally:
            torch._foreach_copy_(self.weights, kept)
            if self.counts:
                torch._foreach_copy_(self.counts, kept_counts)

    @torch.no_grad()
    def follow_weights(self) -> None:
        """Start the averages afresh from the model's weights (a checkpoint written without them)."""
        torch._foreach_copy_(self.averages, [w.float() if w.dtype != a.dtype else w
                                             for w, a in zip(self.weights, self.averages)])
        if self.counts:
            torch._foreach_copy_(self.count_copies, self.counts)
        self.updates = 0

    def state_dict(self) -> dict:
        """On the CPU: every process can read a checkpoint back wherever it runs, a CPU-only machine too."""
        return {"updates": self.updates, "weights": {n: a.cpu() for n, a in zip(self.names, self.averages)},
                "counts": [c.cpu() for c in self.count_copies]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        saved = state["weights"]
        if sorted(saved) != sorted(self.names):
            raise UserError("the checkpoint's averaged weights (ema) are of another model; use another output_dir")
        torch._foreach_copy_(self.averages, [saved[n].to(a.device) for n, a in zip(self.names, self.averages)])
        if self.counts:
            torch._foreach_copy_(self.count_copies, [c.to(a.device) for c, a in zip(state["counts"], self.count_copies)])
        self.updates = state["updates"]

    def note(self) -> str:
        warm = ", the decay warmed up as timm's (1 - (1 + n)^(-2/3))" if self.warmup else ""
        start = f" from optimizer step {self.start}" if self.start else ""
        every = f"every {self.every} optimizer steps" if self.every > 1 else "after every optimizer step"
        judged = ("validation, the best checkpoint, model.safetensors and predict use the averages"
                  + ("; raw_val_* columns score the trained weights" if self.validate == "both" else ""))
        return f"ema: weights averaged with decay {self.decay:g} {every}{start}{warm}; {judged}"


def weight_average(model: torch.nn.Module, ema: Optional[dict]) -> Optional[WeightAverage]:
    """The run's `WeightAverage`, where `ema` (checked settings) asks for one."""
    ema = checked_ema(ema or {})
    if not ema["decay"]:
        return None
    return WeightAverage(model, **ema)
