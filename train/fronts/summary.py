"""The layer table of a model: each leaf layer's output shape and parameter count, and sizes in MB.

Written by hand (torchsummary and torchinfo are extra dependencies and differ from the tutorial's
table): one forward pass of a batch of two with hooks on the leaf modules.
"""

from __future__ import annotations

import torch
from torch import nn

MB = 2**20


def _shape(out) -> list:
    if torch.is_tensor(out):
        return [-1, *out.shape[1:]]
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return [-1, *out[0].shape[1:]]
    return []


def _bytes_per_sample(out) -> int:
    tensors = [out] if torch.is_tensor(out) else [t for t in (out if isinstance(out, (tuple, list)) else ())
                                                  if torch.is_tensor(t)]
    return sum(t.numel() // max(1, t.shape[0]) * t.element_size() for t in tensors)


def summary(model: nn.Module, input_shape, input_dtype=torch.float32, print_fn=print) -> None:
    """Print (with `print_fn`) the layer table for one sample of shape `input_shape` (without the
    batch dimension), as torchkeras' `summary` does: nothing is returned, so that a Python shell
    or a notebook shows the table once (`summary_text` gives it as a string)."""
    print_fn(summary_text(model, input_shape, input_dtype))


def summary_text(model: nn.Module, input_shape, input_dtype=torch.float32) -> str:
    """The layer table of `summary`: each leaf layer's output shape and parameters, the totals and
    the sizes in MB."""
    rows, hooks = [], []

    def record(module, _inputs, output):
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((f"{type(module).__name__}-{len(rows) + 1}", _shape(output), own,
                     _bytes_per_sample(output)))

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(record))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros((2, *input_shape), dtype=input_dtype, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    # parameters held directly by modules with children (not seen by the leaf hooks) still count
    in_rows = sum(r[2] for r in rows)
    line, double = "-" * 64, "=" * 64
    out = [line, f"{'Layer (type)':>20}  {'Output Shape':>25} {'Param #':>15}", double]
    out += [f"{name:>20}  {str(shape):>25} {count:>15,}" for name, shape, count, _ in rows]
    if total - in_rows > 0:
        out.append(f"{'(non-leaf params)':>20}  {'':>25} {total - in_rows:>15,}")
    input_mb = x[0].numel() * x.element_size() / MB
    activations_mb = 2 * sum(r[3] for r in rows) / MB  # forward + backward, as torchsummary counts
    params_mb = sum(p.numel() * p.element_size() for p in params) / MB
    out += [double, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", line,
            f"Input size (MB): {input_mb:.6f}", f"Forward/backward pass size (MB): {activations_mb:.6f}",
            f"Params size (MB): {params_mb:.6f}",
            f"Estimated Total Size (MB): {input_mb + activations_mb + params_mb:.6f}", line]
    return "\n".join(out)
