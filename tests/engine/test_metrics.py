"""The epoch's sums: metrics that do not depend on how the data is batched."""

import pytest
import torch


def test_sample_weighted_metrics_do_not_depend_on_the_batching():
    from train.engine.metrics import EpochSums, mae, mse

    g = torch.Generator().manual_seed(0)
    preds, targets = torch.randn(101, 1, generator=g), torch.randn(101, generator=g)  # (N, 1) against (N,)
    errors = preds.squeeze(1).double() - targets.double()
    whole = {"mae": errors.abs().mean().item(), "mse": errors.pow(2).mean().item()}
    for size in (1, 7, 101):
        sums = EpochSums({"mae": mae, "mse": mse}, "cpu")
        for i in range(0, 101, size):
            p, t = preds[i:i + size], targets[i:i + size]
            sums.add(torch.nn.functional.mse_loss(p.squeeze(1), t), p, t)
        result = sums.result()
        assert result["mae"] == pytest.approx(whole["mae"], abs=1e-12)
        assert result["mse"] == pytest.approx(whole["mse"], abs=1e-12)
        assert result["loss"] == pytest.approx(whole["mse"], rel=1e-6)
