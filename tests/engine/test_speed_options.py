"""Speed options that change how, not what, the loop computes: the loader tuning sweep and the
NHWC layout. (torch.compile is exercised by hand: on this CPU it compiles for ~30 s.)"""

import pytest
import torch

from train.data.loader_tuning import tune
from train.engine.loop import Loop


def test_tune_times_every_candidate_and_names_the_best(small_cfg):
    printed = []
    rows = tune(small_cfg, "cpu", batches=3, print_fn=printed.append)
    settings = [r["setting"] for r in rows]
    assert "in-memory fast path (num_workers=0)" in settings
    assert "per sample: num_workers=0, pin_memory=False" in settings
    assert all(r["samples_per_s"] > 0 and r["first_batch_s"] >= 0 for r in rows)
    assert [r["samples_per_s"] for r in rows] == sorted((r["samples_per_s"] for r in rows), reverse=True)
    assert printed[-1].startswith(f"best: {rows[0]['setting']}") and "config: data.num_workers=" in printed[-1]


def test_channels_last_trains_the_same_model_in_nhwc():
    def run(channels_last):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(8 * 6 * 6, 3))
        x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
        dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        loop = Loop(net, torch.optim.SGD(net.parameters(), lr=0.1), torch.nn.functional.cross_entropy,
                    channels_last=channels_last)
        return net, loop.fit(2, dl, dl).frame()

    net, history = run(True)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    _, plain = run(False)
    assert history["val_loss"].tolist() == pytest.approx(plain["val_loss"].tolist(), abs=1e-5)


def test_bf16_where_it_is_fast_and_a_plan_line_where_it_is_emulated(monkeypatch):
    from train.engine import devices

    for units, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(devices, "cpu_has_bf16_units", lambda units=units: units)
        assert devices.resolve_precision("auto", cpu=True) == expected
        assert devices.resolve_precision("bf16", cpu=True) == "bf16"  # asked for: kept, and the plan says why slow
        assert (devices.precision_note("bf16", "cpu") is None) == units
        assert devices.precision_note("no", "cpu") is None
