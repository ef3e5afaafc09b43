"""A tiny image classifier for large images (a test fixture): it pools them down first, so that the
test of streaming spends its time on decoding, not on convolutions."""

from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(24), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Dropout(0.1),
                                    nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.layers(x)
