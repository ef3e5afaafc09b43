"""What deterministic kernels cost a step: the tutorial CNN (batch 128, Adam) in a hand-written
loop over data on the device, under each setting in turn, in interleaved rounds; the median
ms/step of each. Settings: torch's defaults; cuDNN's deterministic algorithms without autotuning;
that plus `use_deterministic_algorithms(True, warn_only=True)` with torch's warning shown once per
place (Python's default), with every warning collected as the service does
(`train.distributed.determinism`), and with the warning ignored; and cuDNN autotuning alone.

    python bench/determinism.py [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def settle(name: str) -> None:
    from train.distributed import determinism

    warnings.resetwarnings()
    warnings.simplefilter("default")
    warnings.showwarning = determinism.warnings.showwarning = ORIGINAL_SHOW
    torch.backends.cudnn.deterministic = name not in ("defaults", "autotuned")
    torch.backends.cudnn.benchmark = name == "autotuned"
    torch.use_deterministic_algorithms(name.startswith("deterministic algorithms"), warn_only=True)
    if name == "deterministic algorithms, collected":
        determinism.set_deterministic(True)
    if name == "deterministic algorithms, ignored":
        warnings.filterwarnings("ignore", message=r".* does not have a deterministic implementation")


ORIGINAL_SHOW = warnings.showwarning
SETTINGS = ["defaults", "cudnn deterministic", "deterministic algorithms, shown once",
            "deterministic algorithms, collected", "deterministic algorithms, ignored", "autotuned"]


def steps(device, n: int) -> float:
    from train.fronts.models import TutorialCNN

    torch.manual_seed(0)
    net = TutorialCNN().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(n, 128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (n, 128), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(10):  # warm-up (and autotuning, where it is on)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[i]), y[i]).backward()
        opt.step()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    start = time.perf_counter()
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[i]), y[i]).backward()
        opt.step()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name in SETTINGS:
            settle(name)
            times[name].append(steps(device, args.steps))
    base = statistics.median(times["defaults"])
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, {args.steps} steps, "
          f"{args.rounds} rounds, median ms/step")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40s} {median:7.3f} ms  x{median / base:5.2f}   ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
