"""The data factory of the digits example: scikit-learn's bundled `load_digits` (1,797 images of
8x8 pixels, values 0-16, ten classes), split into training and validation sets.

The contract a factory keeps: return the training and validation data sets (map-style torch
Datasets; a TensorDataset is held in memory and takes the fast path)."""

import torch
from torch.utils.data import TensorDataset


def load(val_fraction: float = 0.2, seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(labels) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val])
