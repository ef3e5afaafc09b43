"""Named models. The config's `model` key picks one; this module knows nothing of data or the loop."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .errors import ConfigError


class TutorialCNN(nn.Module):
    """The reference MNIST CNN (53,994 parameters), layer for layer as in the tutorial."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv2d(in_channels, 32, kernel_size=3),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 64, kernel_size=5),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Dropout2d(p=0.1),
            nn.AdaptiveMaxPool2d((1, 1)),
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        ])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


MODELS: dict[str, Callable[..., nn.Module]] = {"tutorial_cnn": TutorialCNN}


def build_model(name: str, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes)
