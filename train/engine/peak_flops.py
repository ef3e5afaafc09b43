"""A device's peak FLOP/s, the denominator of MFU (model FLOPs utilisation).

MFU = the model's FLOP/s (the history's `flops_per_s`, counted by torch's FLOP counter) / the peak
of the devices that trained it. The peak is the one given (`device.peak_tflops`, per device, i.e.
per process) or, on an NVIDIA GPU this table knows, its dense figure for the precision the run
computes in: bf16/fp16 tensor cores under mixed precision, TF32 where torch lets matmuls use it,
else plain fp32. A CPU has no figure here: nothing is invented for it.
"""

from __future__ import annotations

from typing import Optional

import torch

# Dense (no sparsity) TFLOP/s from NVIDIA's data sheets: (bf16/fp16 tensor, tf32 tensor, fp32).
# The first name contained in torch's device name wins, so the more specific names come first.
NVIDIA_PEAK_TFLOPS = (
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H100 NVL", (835.0, 418.0, 60.0)),
    ("H100", (989.4, 494.7, 66.9)),  # SXM
    ("H200", (989.4, 494.7, 66.9)),
    ("GH200", (989.4, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
    ("A800", (312.0, 156.0, 19.5)),
    ("L40S", (362.1, 183.0, 91.6)),
    ("L40", (181.0, 90.5, 90.5)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
    ("RTX 4090", (165.2, 82.6, 82.6)),
    ("RTX 3090", (71.0, 35.6, 35.6)),
    ("V100", (125.0, 15.7, 15.7)),  # fp16 tensor cores; no bf16, no tf32
    ("T4", (65.0, 8.1, 8.1)),
)


def peak_flops(accelerator, given_tflops: Optional[float]) -> tuple[Optional[float], str]:
    """(peak FLOP/s of one device, the plan's words for it), or (None, why there is none)."""
    against = "the history's flops_per_s over the peak of every process's device: "
    if given_tflops:
        return given_tflops * 1e12, against + f"{given_tflops:g} TFLOP/s each (device.peak_tflops)"
    device = accelerator.device
    if device.type != "cuda":
        return None, f"not reported: no peak FLOP/s known for a {device.type}; give device.peak_tflops"
    name = torch.cuda.get_device_name(device)
    for known, (tensor, tf32, fp32) in NVIDIA_PEAK_TFLOPS:
        if known in name:
            if accelerator.mixed_precision in ("bf16", "fp16"):
                return tensor * 1e12, against + f"{tensor:g} TFLOP/s each ({name}, {accelerator.mixed_precision} dense)"
            if torch.backends.cuda.matmul.allow_tf32:
                return tf32 * 1e12, against + f"{tf32:g} TFLOP/s each ({name}, tf32 dense)"
            return fp32 * 1e12, against + f"{fp32:g} TFLOP/s each ({name}, fp32)"
    return None, f"not reported: no peak FLOP/s known for {name}; give device.peak_tflops"
