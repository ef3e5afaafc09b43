"""What the service adds to a training step, counted where it cannot hide: the operators it
dispatches (on a GPU each is a kernel launch) and the values it reads back to the host (each a
wait for the device), for a tiny MLP whose own step is a few dozen operators, against a
hand-written loop doing the same work (forward, loss, backward, Adam, and the epoch's loss and
accuracy summed on the device)."""

import collections
import contextlib
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from helpers.tiny import BATCH, SAMPLES, data, mlp

STEPS = SAMPLES // BATCH
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


class Dispatched(TorchDispatchMode):
    """Every operator dispatched below autograd (forward, backward and the optimizer's)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting(monkeypatch):
    """(operators, host reads) counted inside the block."""
    reads = collections.Counter()
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _name=name, **k: reads.update([_name]) or _real(self, *a, **k))
    with Dispatched() as ops:
        yield ops.ops, reads
    monkeypatch.undo()


def hand_written(monkeypatch):
    net, ds = mlp(), data()
    x, y = ds.tensors
    optimizer, loss_fn = torch.optim.Adam(net.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    with counting(monkeypatch) as (ops, reads):
        loss_sum, hits = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
        for i in range(STEPS):
            idx = order[i * BATCH:(i + 1) * BATCH]
            out = net(x[idx])
            loss = loss_fn(out, y[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * BATCH
            hits += (out.detach().argmax(1) == y[idx]).sum()
        (loss_sum / SAMPLES).item(), (hits / SAMPLES).item()  # the epoch's figures, read once
    return ops, reads


def class_front(monkeypatch):
    net = mlp()
    model = train.Model(net)
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
                  metrics_dict={"accuracy": train.metrics.accuracy})
    loader = torch.utils.data.DataLoader(data(), batch_size=BATCH, shuffle=True)
    with counting(monkeypatch) as (ops, reads), contextlib.redirect_stdout(io.StringIO()):
        model.fit(1, loader, log_step_freq=1000)
    return ops, reads


def script(monkeypatch, tmp_path):
    from train.fronts.script import main

    args = ["model=helpers.tiny:mlp", "data.source=python", "data.factory=helpers.tiny:data", "data.val_size=0", "data.num_classes=2",
            "epochs=1", f"batch_size={BATCH}", "optimizer.name=adam", "optimizer.lr=0.001", "scheduler.name=none",
            "metrics=[accuracy]", "progress=false", "checkpoint.enabled=false", f"output_dir={tmp_path}"]
    with counting(monkeypatch) as (ops, reads), contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    return ops, reads


@pytest.mark.parametrize("front", ["class front", "script"])
def test_a_step_dispatches_within_10_percent_of_a_hand_written_loop_and_reads_nothing_back(front, monkeypatch,
                                                                                            tmp_path):
    hand_ops, hand_reads = hand_written(monkeypatch)
    ops, reads = class_front(monkeypatch) if front == "class front" else script(monkeypatch, tmp_path)
    per_step, hand_per_step = sum(ops.values()) / STEPS, sum(hand_ops.values()) / STEPS
    extra = {k: (ops[k] - hand_ops.get(k, 0)) / STEPS for k in ops if ops[k] - hand_ops.get(k, 0) >= STEPS / 2}
    # everything counted, the run's set-up and end included (its checks of the model, the epoch's sums)
    assert per_step <= 1.10 * hand_per_step, (per_step, hand_per_step, extra)
    # host reads: the optimizer's own (Adam reads its step count) as in the hand loop; besides them one
    # status check every 10 optimizer steps (signals, a non-finite loss) and the epoch's end, never one a step
    service = sum(reads.values()) - sum(hand_reads.values())
    assert service <= STEPS / 10 + 10, (reads, hand_reads)
