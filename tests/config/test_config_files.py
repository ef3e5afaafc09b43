import pytest

from train.config.loading import load_config
from train.config.loading import describe_keys
from train.base.errors import ConfigError

from conftest import ROOT

MNIST_YAML = ROOT / "configs" / "mnist.yaml"


def test_defaults_and_overrides():
    cfg = load_config(MNIST_YAML, ["epochs=1", "data.train_size=2048", "optimizer.lr=0.02", "max_grad_norm=1"])
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer.name) == (1, 128, "adam")
    assert cfg.data.train_size == 2048 and cfg.optimizer.lr == 0.02 and cfg.max_grad_norm == 1.0
    assert load_config(MNIST_YAML, ["data.train_size=null"]).data.train_size is None
    assert load_config(MNIST_YAML, ["optimizer.lr=1e-3"]).optimizer.lr == 0.001  # YAML 1.1 reads 1e-3 as text
    assert load_config(MNIST_YAML, ["mixed_precision=no"]).mixed_precision == "no"  # and `no` as False
    with pytest.raises(ConfigError, match="'strategy' must be one of ddp, fsdp; got 'no'"):
        load_config(MNIST_YAML, ["strategy=off"])


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'\?"):
        load_config(MNIST_YAML, ["optimizer.lrr=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'epoch'; did you mean 'epochs'"):
        load_config(None, ["epoch=2"])


def test_wrong_type_and_range():
    with pytest.raises(ConfigError, match="'epochs' expects int, got str 'three'"):
        load_config(MNIST_YAML, ["epochs=three"])
    with pytest.raises(ConfigError, match="'batch_size' must be > 0, got 0"):
        load_config(MNIST_YAML, ["batch_size=0"])
    with pytest.raises(ConfigError, match="'epochs' must be >= 0, got -1"):
        load_config(MNIST_YAML, ["epochs=-1"])
    with pytest.raises(ConfigError, match="'scheduler.interval' must be one of epoch, step; got 'epochs'"):
        load_config(MNIST_YAML, ["scheduler.interval=epochs"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(MNIST_YAML, ["epochs"])


def test_yaml_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\ndata:\n  path: [unclosed\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' has a YAML syntax error at line \d"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file .*missing.yaml' not found"):
        load_config(tmp_path / "missing.yaml")


def test_help_lists_every_section():
    text = describe_keys()
    for key in ("epochs", "batch_size", "data.train_size", "data.val_size", "mixed_precision",
                "gradient_accumulation_steps", "optimizer.lr", "scheduler.name"):
        assert f"  {key} = " in text
