"""The three fronts drive one loop: same seed, same data -> the same history."""

import pandas as pd
import pytest
import torch
from accelerate.utils import set_seed

import train
from train.data.loaders import make_loaders
from train.fronts.script import main
from train.fronts.models import TutorialCNN

from conftest import MNIST

COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
ARGS = ["epochs=2", "scheduler.name=none", "data.train_size=768", "data.val_size=256", "batch_size=64", f"data.path={MNIST}", "seed=7"]


def class_front(cfg):
    set_seed(cfg.seed)
    loaders = make_loaders(cfg, seed=cfg.seed)
    model = train.Model(TutorialCNN())
    model.compile(loss_func=torch.nn.CrossEntropyLoss(),
                  optimizer=torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr),
                  metrics_dict={"accuracy": train.metrics.accuracy})
    return model.fit(cfg.epochs, dl_train=loaders.train, dl_val=loaders.val, log_step_freq=8, seed=cfg.seed), \
        model, loaders


def function_front(cfg):
    set_seed(cfg.seed)
    loaders = make_loaders(cfg, seed=cfg.seed)
    model = TutorialCNN()
    model.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    model.loss_func = torch.nn.CrossEntropyLoss()
    model.metric_func = train.metrics.accuracy
    model.metric_name = "accuracy"
    return train.train_model(model, cfg.epochs, loaders.train, loaders.val, log_step_freq=8, seed=cfg.seed)


def test_three_fronts_one_history(tmp_path, capsys):
    cfg = train.load_config(None, ARGS + [f"output_dir={tmp_path}"])
    assert main(["--config", "configs/mnist.yaml", *ARGS, f"output_dir={tmp_path}"]) == 0
    script = pd.read_csv(tmp_path / "history.csv")
    assert {"config.yaml", "history.csv", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    by_class, model, loaders = class_front(cfg)
    by_function = function_front(cfg)

    assert list(script.columns) == COLUMNS + ["epoch_s", "data_s", "compute_s", "samples_per_s", "flops_per_s",
                                              "max_memory_mb"]
    assert list(by_class.columns) == list(script.columns) == list(by_function.columns)
    assert script["val_accuracy"].iloc[-1] > 0.6  # chance is 0.1
    pd.testing.assert_frame_equal(script[COLUMNS], by_class[COLUMNS], check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(script[COLUMNS], by_function[COLUMNS], check_exact=False, rtol=1e-6)
    assert (script["samples_per_s"] > 0).all()

    out = capsys.readouterr().out
    assert "[step = 8] loss: " in out and "val_accuracy" in out

    # evaluate and predict of the class front agree with the history and with each other
    scores = model.evaluate(loaders.val)
    assert scores["val_accuracy"] == by_class["val_accuracy"].iloc[-1]
    preds = model.predict(loaders.val)
    assert preds.shape == (256, 10)
    labels = loaders.val.dataset.labels
    assert (preds.argmax(1) == labels).double().mean().item() == pytest.approx(scores["val_accuracy"], abs=1e-12)


def test_function_steps():
    set_seed(0)
    model = TutorialCNN()
    model.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.loss_func = torch.nn.CrossEntropyLoss()
    model.metric_func = train.metrics.accuracy
    model.metric_name = "accuracy"
    features, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    loss, metric = train.train_step(model, features, labels)
    assert isinstance(loss, float) and 0.0 <= metric <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = [p.detach().clone() for p in model.parameters()]
    valid_loss, _ = train.valid_step(model, features, labels)
    assert all(torch.equal(a, b) for a, b in zip(after, model.parameters()))
    assert valid_loss > 0
