"""A training step pays for no lookup that cannot change during a run: Accelerate's optimizer
wrapper looked a package up (`find_spec("lomo_optim")`) twice and inspected the optimizer's
signature once at every step (about 300 us a step here, half a tiny model's step)."""

import importlib.util
import inspect

import torch

import train


def test_a_step_looks_up_no_package_and_inspects_no_signature(monkeypatch):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(640, 4), torch.randint(0, 2, (640,)))
    net = torch.nn.Linear(4, 2)
    model = train.Model(net)
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=0.01))
    looked_up, inspected = [], []
    find_spec, signature = importlib.util.find_spec, inspect.signature
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: looked_up.append(name) or find_spec(name, *a, **k))
    monkeypatch.setattr(inspect, "signature", lambda fn, *a, **k: inspected.append(fn) or signature(fn, *a, **k))
    history = model.fit(2, torch.utils.data.DataLoader(data, batch_size=8, shuffle=True), log_step_freq=1000)
    assert len(history) == 2  # 160 optimizer steps
    assert looked_up.count("lomo_optim") < 5, looked_up.count("lomo_optim")  # at set-up, not twice a step (320)
    assert len(inspected) < 40, len(inspected)  # the callbacks' hooks at the start, not one per step
