"""The data factory of the diabetes example: scikit-learn's bundled `load_diabetes` (442 patients,
10 standardised features, a disease-progression score of 25-346 to predict), split in two.
Targets are (N, 1) floats, the shape the model's output has, so that the loss compares sample
by sample."""

import torch
from torch.utils.data import TensorDataset


def load(val_fraction: float = 0.2, seed: int = 0):
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32) / torch.tensor(data.data.std(axis=0), dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(y) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])
