"""A hand-written script's start-up, for comparison: import torch, build the tutorial CNN and Adam,
take one optimizer step on a random batch, print the wall time of that step (JSON)."""

import time

import json  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.MaxPool2d(2, 2), nn.Conv2d(32, 64, 5), nn.MaxPool2d(2, 2),
                    nn.Dropout2d(0.1), nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
                    nn.Linear(32, 10))
opt = torch.optim.Adam(net.parameters(), lr=0.01)
loss = nn.functional.cross_entropy(net(torch.randn(128, 1, 28, 28)), torch.randint(0, 10, (128,)))
loss.backward()
opt.step()
print(json.dumps({"first_step": time.time()}))
