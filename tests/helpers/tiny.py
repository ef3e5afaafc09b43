"""A tiny MLP and its data, for the tests of what a step costs (`tests/engine/test_step_cost.py`):
the model's own work is so small that whatever the service adds shows."""

import torch

SAMPLES, BATCH = 3200, 32  # 100 optimizer steps an epoch


def data(train_size: int = SAMPLES):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(train_size, 32, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))


def load(train_size: int = 2048, val_size: int = 301):
    """Training and validation sets for a config run (`data.factory=tests.helpers.tiny:load`)."""
    g = torch.Generator().manual_seed(1)
    vx = torch.randn(val_size, 32, generator=g)
    return data(train_size), torch.utils.data.TensorDataset(vx, (vx[:, 0] > 0).long())
