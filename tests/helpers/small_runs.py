"""Small runs for the tests, built in plain torch: a tiny classifier's `Loop` with dropout and
momentum SGD over a loader whose iterator draws from the global RNG (the resume trap), and a small
class-front model over Gaussian blobs."""

import torch
from torch import nn


def tiny_loop():
    from train.engine.devices import make_accelerator
    from train.engine.loop import Loop

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 3))
    return Loop(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), nn.functional.cross_entropy,
                accelerator=make_accelerator(seed=1))


def tiny_loader():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 3, (64,), generator=g)
    # no generator of its own: starting its iterator draws from the global RNG, the known trap
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)


def blobs(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + y[:, None]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)


def small_model(seed=0):
    import train

    train.seed_everything(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 3))
    model = train.Model(net)
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=0.01),
                  metrics_dict={"accuracy": train.metrics.accuracy})
    return model
