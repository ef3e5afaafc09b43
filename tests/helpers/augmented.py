"""A user's data set that augments at random in `__getitem__` (Python's, NumPy's and torch's
generators), and a stateful user metric (update/compute/reset, with state_dict), for the tests."""

import random

import numpy as np
import torch


class Noisy(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = (self.x.mean(dim=(1, 2, 3)) > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i] + 0.3 * torch.randn(1, 8, 8)  # torch's generator
        if random.random() < 0.5:  # Python's
            x = x.flip(-1)
        x = x * float(np.random.uniform(0.8, 1.2))  # NumPy's
        return x, self.y[i]


def load(train_size: int = 2048, val_size: int = 301):
    return Noisy(train_size, 0), Noisy(val_size, 1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                          torch.nn.Dropout(0.2), torch.nn.Linear(32, 2))

    def forward(self, x):
        return self.layers(x)


class Seen:
    """A stateful metric: the fraction of class-0 predictions over the epoch so far."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.zeros, self.total = 0, 0

    def update(self, y_pred, y_true):
        self.zeros += int((y_pred.argmax(dim=1) == 0).sum())
        self.total += len(y_true)

    def compute(self):
        return self.zeros / max(1, self.total)

    def state_dict(self):
        return {"zeros": self.zeros, "total": self.total}

    def load_state_dict(self, state):
        self.zeros, self.total = state["zeros"], state["total"]
