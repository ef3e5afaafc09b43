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


class FailsAtThirdBatch(torch.nn.Module):
    """The tutorial CNN with a bug that strikes at the third training batch of every process, on
    every attempt (the model checks before training run in eval mode and are not counted)."""

    def __init__(self):
        super().__init__()
        from train.fronts.models import TutorialCNN

        self.net, self.batches = TutorialCNN(), 0

    def forward(self, x):
        if self.training:
            self.batches += 1
            if self.batches == 3:
                raise ValueError("a bug at the third batch")
        return self.net(x)


class NaNAtSecondBatch(torch.nn.Module):
    """The tutorial CNN whose output turns NaN at its second training batch (a diverging run)."""

    def __init__(self):
        super().__init__()
        from train.fronts.models import TutorialCNN

        self.net, self.batches = TutorialCNN(), 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.batches += 1
            if self.batches >= 2:
                return out * float("nan")
        return out
