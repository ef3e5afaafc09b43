"""The tutorial's class-style cells, unchanged but for the import line (and the data subset)."""

import pytest

from conftest import need_module
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import train as torchkeras  # the one changed line: was `import torchkeras`

sklearn_metrics = need_module("sklearn.metrics")


@pytest.fixture
def tutorial_loaders(torchvision_root):
    tmp_path = torchvision_root
    transform = transforms.Compose([transforms.ToTensor()])
    ds_train = torchvision.datasets.MNIST(root=str(tmp_path), train=True, download=False, transform=transform)
    ds_valid = torchvision.datasets.MNIST(root=str(tmp_path), train=False, download=False, transform=transform)
    ds_train, ds_valid = Subset(ds_train, range(2048)), Subset(ds_valid, range(1000))
    dl_train = DataLoader(ds_train, batch_size=128, shuffle=True, num_workers=0)
    dl_valid = DataLoader(ds_valid, batch_size=128, shuffle=False, num_workers=0)
    return dl_train, dl_valid


@pytest.mark.slow  # three epochs of 2048 digits: the tutorial's accuracy, not a smoke test
def test_class_style_cells(tutorial_loaders, capsys):
    dl_train, dl_valid = tutorial_loaders
    torch.manual_seed(0)

    class CnnModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([
                nn.Conv2d(in_channels=1, out_channels=32, kernel_size=3),
                nn.MaxPool2d(kernel_size=2, stride=2),
                nn.Conv2d(in_channels=32, out_channels=64, kernel_size=5),
                nn.MaxPool2d(kernel_size=2, stride=2),
                nn.Dropout2d(p=0.1),
                nn.AdaptiveMaxPool2d((1, 1)),
                nn.Flatten(),
                nn.Linear(64, 32),
                nn.ReLU(),
                nn.Linear(32, 10)]
            )

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = torchkeras.Model(CnnModel())
    print(model)
    model.summary(input_shape=(1, 32, 32))

    from sklearn.metrics import accuracy_score

    def accuracy(y_pred, y_true):
        y_pred_cls = torch.argmax(nn.functional.softmax(y_pred, dim=1).data, dim=1).data
        return accuracy_score(y_true.numpy(), y_pred_cls.numpy())

    model.compile(loss_func=nn.CrossEntropyLoss(),
                  optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
                  metrics_dict={"accuracy": accuracy})

    dfhistory = model.fit(3, dl_train=dl_train, dl_val=dl_valid, log_step_freq=10)
    scores = model.evaluate(dl_valid)
    first = model.predict(dl_valid)[0:10]

    out = capsys.readouterr().out
    assert "Total params: 53,994" in out and "[step = 10] loss:" in out
    assert list(dfhistory.columns[:5]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert dfhistory["epoch"].tolist() == [1, 2, 3]
    assert dfhistory["val_accuracy"].iloc[-1] > 0.8
    assert scores["val_accuracy"] == pytest.approx(dfhistory["val_accuracy"].iloc[-1], abs=1e-12)
    assert first.shape == (10, 10)
    assert first.argmax(1).tolist()[:5] == [7, 2, 1, 0, 4]  # the first test digits, well predicted


def test_the_chapters_first_cells_import_summary_and_model_from_the_package(capsys):
    """`from torchkeras import summary, Model` then `summary(net, input_shape=(1,32,32))`, with the
    project in torchkeras' place: `train.summary` is the function (the module lives in train.fronts)."""
    from train import Model, summary

    from train.fronts.models import TutorialCNN

    net = TutorialCNN()
    summary(net, input_shape=(1, 32, 32))
    table = capsys.readouterr().out
    assert "Total params: 53,994" in table, table
    assert isinstance(Model(net), torch.nn.Module)
