"""Deterministic kernels by default, where the accelerator is made, and the ops without one named
once. (Their effect, bit-identical runs and resumes on a GPU, is shown by tests/gpu.)"""

import os
import warnings

import torch

import train
from train.engine.devices import make_accelerator


def flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark)


def test_the_accelerator_sets_deterministic_kernels_by_default_and_false_gives_cudnn_autotuning(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = flags()
    try:
        make_accelerator()
        assert flags() == (True, True, False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # for cuBLAS, before its first handle
        make_accelerator(deterministic=False)
        assert flags() == (False, False, True)
        options = train.RunOptions(deterministic=False)
        from train.engine.devices import accelerator_for

        accelerator_for(options)
        assert flags() == (False, False, True)
        accelerator_for(train.RunOptions())
        assert flags() == (True, True, False)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


class WarnsLikeTorch(torch.nn.Module):
    """A model with an op that, like torch's kernels without a deterministic implementation under
    `use_deterministic_algorithms(True, warn_only=True)`, warns at every call."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        if torch.are_deterministic_algorithms_enabled():
            warnings.warn("fancy_pool_backward_cuda does not have a deterministic implementation, but you set "
                          "'torch.use_deterministic_algorithms(True, warn_only=True)'.", UserWarning)
        return self.linear(x)


def test_an_op_without_a_deterministic_kernel_is_named_once_not_warned_at_every_step(capsys):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    model = train.Model(WarnsLikeTorch())
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings(record=True) as shown:  # what a user would see as warnings
        warnings.simplefilter("default")
        model.fit(2, torch.utils.data.DataLoader(data, batch_size=8), log_step_freq=4)
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "fancy_pool_backward_cuda" in line]
    assert len(notes) == 1 and notes[0].startswith("note: deterministic: fancy_pool_backward_cuda has no "
                                                   "deterministic kernel in torch"), out
    assert not [w for w in shown if "deterministic implementation" in str(w.message)], [str(w.message) for w in shown]

    plain = train.Model(torch.nn.Linear(4, 2))  # a later run in this process without that op: nothing said
    plain.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(plain.parameters(), lr=0.1))
    plain.fit(1, torch.utils.data.DataLoader(data, batch_size=8), log_step_freq=4)
    assert "fancy_pool" not in capsys.readouterr().out

    model = train.Model(WarnsLikeTorch())  # deterministic=False: torch does not warn, nothing is said
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  deterministic=False)
    model.fit(1, torch.utils.data.DataLoader(data, batch_size=8))
    assert "fancy_pool" not in capsys.readouterr().out
    train.make_accelerator()  # back to the default for the tests after this one


def test_a_loss_whose_op_has_no_deterministic_kernel_passes_the_checks_before_training(capsys):
    """The checks turn a loss's UserWarning into a refusal (a broadcast MSE); torch's note that an op
    has no deterministic kernel (2-d cross-entropy on CUDA) is not such a mistake."""
    def loss(y_pred, y_true):
        if torch.are_deterministic_algorithms_enabled():
            warnings.warn("nll_loss2d_forward_out_cuda_template does not have a deterministic implementation, but "
                          "you set 'torch.use_deterministic_algorithms(True, warn_only=True)'.", UserWarning)
        return torch.nn.functional.cross_entropy(y_pred, y_true)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    model = train.Model(torch.nn.Linear(4, 2))
    model.compile(loss_func=loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    history = model.fit(1, torch.utils.data.DataLoader(data, batch_size=8), log_step_freq=2)
    assert len(history) == 1
    assert "note: deterministic: nll_loss2d_forward_out_cuda_template has no" in capsys.readouterr().out
