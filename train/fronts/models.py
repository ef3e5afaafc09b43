"""The built-in models, by name. The config's `model` key picks one of these or imports the user's
own (`train.fronts.building.build_model`); this module knows nothing of data or the loop."""

from __future__ import annotations

from typing import Callable

from torch import nn



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


class FastCNN(nn.Module):
    """A small batch-normalised CNN for the speed recipe (configs/mnist_fast.yaml): three 3x3 conv
    blocks (32, 64, 128 channels), BatchNorm so that a large batch and learning rate train stably
    in a couple of epochs, global max pooling and one linear layer (94,186 parameters)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()

        def block(cin, cout):  # conv without bias: BatchNorm's shift replaces it
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(
            *block(in_channels, 32), nn.MaxPool2d(2),
            *block(32, 64), nn.MaxPool2d(2),
            *block(64, 128), nn.AdaptiveMaxPool2d((1, 1)),
            nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.layers(x)


MODELS: dict[str, Callable[..., nn.Module]] = {"tutorial_cnn": TutorialCNN, "fast_cnn": FastCNN}
