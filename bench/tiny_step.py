"""The service's own cost per step, where the model costs almost nothing: a tiny MLP (32-64-2),
batch 32, 40,000 samples in memory (1,250 steps an epoch), Adam, one thread, in interleaved rounds
(median microseconds per step). Contenders: a plain loop cutting batches from tensors, a bare
Accelerate loop (`prepare` of the model, the optimizer and a `DataLoader` over a `TensorDataset`;
`accelerator.backward`), and the class front's `fit` over that `DataLoader` with deterministic
kernels (the default) and without, and with the loader used as given (sample by sample, as before
the class front served a user's `TensorDataset` from memory).

    python bench/tiny_step.py [--rounds 3] [--samples 40000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

BATCH = 32


def data(samples: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 32, generator=g)
    return x, (x[:, 0] > 0).long()


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))


def plain(x, y) -> float:
    net, loss_fn = mlp(), torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.randperm(len(x))
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        idx = order[i:i + BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[idx]), y[idx]).backward()
        opt.step()
    return time.perf_counter() - start


def bare_accelerate(x, y) -> float:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    net, loss_fn = mlp(), torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    net, opt, dl = acc.prepare(net, opt, dl)
    start = time.perf_counter()
    for xb, yb in dl:
        opt.zero_grad(set_to_none=True)
        acc.backward(loss_fn(net(xb), yb))
        opt.step()
    return time.perf_counter() - start


def class_front(x, y, deterministic: bool, as_given: bool = False) -> float:
    import train

    net = mlp()
    model = train.Model(net)
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
                  metrics_dict={"accuracy": train.metrics.accuracy}, deterministic=deterministic)
    # as_given: a collate of the user's own, so the loader is used as given (sample by sample), as
    # every user's TensorDataset was before the class front served it from memory
    collate = {"collate_fn": lambda samples: torch.utils.data.default_collate(samples)} if as_given else {}
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True, **collate)
    history = model.fit(1, dl, log_step_freq=1000)
    return float(history["epoch_s"].iloc[-1])


CONTENDERS = {"plain loop": plain, "bare accelerate": bare_accelerate,
              "class front fit": lambda x, y: class_front(x, y, True),
              "class front fit, deterministic=False": lambda x, y: class_front(x, y, False),
              "class front fit, loader as given": lambda x, y: class_front(x, y, True, as_given=True)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = data(args.samples)
    steps = -(-args.samples // BATCH)
    times = {name: [] for name in CONTENDERS}
    import contextlib
    import io

    for _ in range(args.rounds):
        for name, run in CONTENDERS.items():
            with contextlib.redirect_stdout(io.StringIO()):  # the class front's table
                times[name].append(run(x, y) / steps * 1e6)
    base = statistics.median(times["plain loop"])
    print(f"tiny MLP, batch {BATCH}, {steps} steps, {args.rounds} rounds, one thread; median us/step")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:38s} {median:8.0f} us  x{median / base:5.2f}   ({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
