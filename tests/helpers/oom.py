"""A model that 'runs out of memory' in training above a batch size that differs between processes
(rank 0: 48 samples, rank 1: 40; one process: 48), as a GPU would raise torch.OutOfMemoryError."""

import os

import torch
from torch import nn

LIMITS = {0: 48, 1: 40}


class Net(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        limit = LIMITS[int(os.environ.get("RANK", "0"))]
        if self.training and x.shape[0] > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: a batch of {x.shape[0]} over {limit})")
        return self.layers(x)
