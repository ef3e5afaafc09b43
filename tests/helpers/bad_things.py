"""Things a user's module might hold by mistake, for the tests of one-line errors (test only)."""

import torch


def broken_metric(y_pred, y_true):
    raise ValueError("this metric is broken")


def not_data():
    return 42


def missing_file():
    raise FileNotFoundError("/data/blobs.npz")


def one_dataset_and_a_list():
    return torch.utils.data.TensorDataset(torch.zeros(8, 2), torch.zeros(8)), [1, 2, 3]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.flatten(1))
