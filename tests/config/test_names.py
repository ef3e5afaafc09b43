"""Names and import paths in a config turned into objects, and their one-line mistakes."""

import pytest
import torch
from train.base.errors import ConfigError


def test_import_paths_and_their_mistakes(tmp_path, monkeypatch):
    from train.config.names import resolve

    assert resolve("torch.optim:RMSprop", {}, "optimizer") is torch.optim.RMSprop
    assert resolve("torch.optim.SGD", {}, "optimizer") is torch.optim.SGD  # dots only, Hydra's way
    (tmp_path / "mine.py").write_text("def f():\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("mine:f", {}, "data factory")() == 3  # the current folder is importable
    assert resolve(f"{tmp_path}/mine.py:f", {}, "data factory")() == 3  # so is a file path
    with pytest.raises(ConfigError, match=r"no module named 'torch.optimm'; did you mean 'torch.optim'\?"):
        resolve("torch.optimm:SGD", {}, "optimizer")
    with pytest.raises(ConfigError, match=r"module 'torch.optim' has no attribute 'Adamm'; did you mean 'Adam'\?"):
        resolve("torch.optim:Adamm", {}, "optimizer")
    (tmp_path / "broken.py").write_text("raise RuntimeError('oops')\n")
    with pytest.raises(ConfigError, match=r"importing 'broken' raised RuntimeError: oops"):
        resolve("broken:x", {}, "model")
