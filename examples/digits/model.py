"""A small CNN for 8x8 digit images: the kind of model a user brings (nothing in `train/` knows it)."""

from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 64, dropout: float = 0.2, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # 8x8 -> 4x4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
