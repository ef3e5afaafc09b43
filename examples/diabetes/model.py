"""A small MLP for tabular regression (one output per sample)."""

from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int = 10, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 1))

    def forward(self, x):
        return self.layers(x)
