"""The history's throughput, MFU and memory columns (train.engine.timing, train.engine.peak_flops),
checked against figures computed here: the run's own FLOP/s over the peak given, the batches' real
tokens counted from their masks, and the process's peak resident set read from the OS."""

import resource

import pytest
import torch
from torch import nn

import train
from tests.helpers.small_runs import blobs


def fit_once(capsys, **options):
    train.seed_everything(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    model = train.Model(net)
    model.compile(loss_func=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=0.01), **options)
    history = model.fit(1, blobs(), blobs(seed=1))
    return history.iloc[-1], " ".join(capsys.readouterr().out.split())


def test_mfu_is_the_flops_over_the_peak_given_and_absent_without_one_on_a_cpu(capsys):
    row, said = fit_once(capsys, peak_tflops=0.002)
    assert row["flops_per_s"] > 0
    assert row["mfu"] == pytest.approx(row["flops_per_s"] / 0.002e12, rel=1e-12)  # one process, one device
    assert "mfu: the history's flops_per_s over the peak of every process's device: 0.002 TFLOP/s each" in said
    row, said = fit_once(capsys)
    assert "mfu" not in row and "mfu:" not in said  # a CPU has no figure in the table, and none was given
    with pytest.raises(train.UserError, match="peak_tflops"):
        fit_once(capsys, peak_tflops=-1.0)


def test_peak_memory_is_this_process_peak_resident_set(capsys):
    row, _ = fit_once(capsys)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 0 < row["max_memory_mb"] <= after  # a peak so far: never above the peak read after the run


def test_real_tokens_leave_padding_out():
    from train.engine.timing import real_tokens

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert real_tokens({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask}).item() == 5
    assert real_tokens({"input_ids": torch.zeros(2, 4, dtype=torch.long)}) == 8  # no mask: no padding
    assert real_tokens(torch.zeros(2, 4)) is None and real_tokens({"pixels": torch.zeros(2, 3)}) is None
