"""Run options: checked once, in one place, whatever the front."""

import pytest
import torch
from train.base.errors import UserError


def test_run_options_are_checked_once_in_the_core():
    from train.engine.loop import Loop
    from train.config.options import run_options

    net = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match=r"nonfinite must be one of 'stop', 'skip'; got 'skipp'"):
        Loop(net, None, torch.nn.functional.mse_loss, nonfinite="skipp")
    with pytest.raises(UserError, match=r"scheduler_interval must be one of 'epoch', 'step'; got 'epochs'"):
        Loop(net, None, torch.nn.functional.mse_loss, scheduler_interval="epochs")
    with pytest.raises(UserError, match=r"fit\(\) got an unknown option 'checkpoint_evry'; did you mean "
                                         r"'checkpoint_every'\?"):
        run_options("fit()", checkpoint_evry=3)
    with pytest.raises(UserError, match=r"keep_last must be a number > 0; got 0"):
        run_options("fit()", keep_last=0)
