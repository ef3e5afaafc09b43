"""Processes kept together: an error on the main process reaches every process."""

import pytest


def test_an_unexpected_error_on_the_main_process_reaches_every_process():
    from train.engine.devices import from_main, make_accelerator
    from train.base.errors import RunError

    with pytest.raises(RunError, match="ZeroDivisionError: division by zero") as caught:
        from_main(make_accelerator(), lambda: 1 / 0)
    assert caught.value.same_on_every_process
