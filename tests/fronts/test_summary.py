import torch
from torch import nn

from train import Model
from train.fronts.models import TutorialCNN

from conftest import ROOT


def test_tutorial_cnn_table(capsys):
    assert Model(TutorialCNN()).summary(input_shape=(1, 32, 32)) is None  # printed once, not echoed again
    table = capsys.readouterr().out
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert lines["Conv2d-1"].split()[-1] == "320" and "[-1, 32, 30, 30]" in lines["Conv2d-1"]
    assert lines["Conv2d-3"].split()[-1] == "51,264" and "[-1, 64, 11, 11]" in lines["Conv2d-3"]
    assert lines["Linear-8"].split()[-1] == "2,080" and "[-1, 32]" in lines["Linear-8"]
    assert lines["Linear-10"].split()[-1] == "330" and "[-1, 10]" in lines["Linear-10"]
    assert "Total params: 53,994" in table and "Trainable params: 53,994" in table
    assert "Non-trainable params: 0" in table
    # sizes from the real tensors: 1x32x32 float32 input; 53,994 float32 parameters
    assert "Input size (MB): 0.003906" in table and "Params size (MB): 0.205971" in table
    assert "Forward/backward pass size (MB): 0.359695" in table


class WithOwnParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(7))  # owned by a module with children
        self.body = nn.Linear(7, 3)
        self.body.weight.requires_grad_(False)

    def forward(self, x):
        return self.body(x * self.scale)


def test_parameters_of_non_leaf_modules_are_counted():
    from train.fronts.summary import summary_text

    table = summary_text(WithOwnParameter(), input_shape=(7,))
    assert "Total params: 31" in table  # 7 + 7*3 + 3
    assert "Trainable params: 10" in table and "Non-trainable params: 21" in table
    assert "(non-leaf params)" in table


def test_fast_cnn_of_the_speed_recipe():
    from train.config.loading import load_config
    from train.fronts.building import build_model

    cfg = load_config(ROOT / "configs" / "mnist_fast.yaml")
    model = build_model(cfg, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == 94_186
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
