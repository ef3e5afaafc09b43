"""Ways training stops early on purpose: early stopping, and a NaN/inf loss (stop or skip)."""

import pandas as pd
import torch
from safetensors.torch import load_file

from conftest import MNIST
from train.fronts.script import main

SMOKE = ["data.train_size=512", "data.val_size=128", "batch_size=64", f"data.path={MNIST}", "progress=false"]


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path, capsys):
    # with a constant learning rate, `lr` never improves on epoch 1: patience 1 stops after epoch 2
    out = tmp_path / "out"
    args = [*SMOKE, "epochs=5", "scheduler.name=none", "early_stopping.monitor=lr", "early_stopping.mode=max",
            "early_stopping.patience=1", "early_stopping.restore_best=true", "checkpoint.keep_last=3",
            f"output_dir={out}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "early stopping after epoch 2: lr has not improved for 1 epoch(s); best 0.01 at epoch 1" in printed
    assert "restored the weights of epoch 1" in printed
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]
    epoch_1 = load_file(str(out / "checkpoints" / "step-00000008" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(final[k], epoch_1[k]) for k in epoch_1)

    # the same command again: the run had stopped, so it trains nothing more and changes nothing
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "holds a finished run stopped early at epoch 2: nothing to train for epochs=5, no file changed" in \
        " ".join(printed.split())
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]
    again = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)  # still the restored best weights


def test_early_stopping_without_validation_data(tmp_path):
    out = tmp_path / "out"
    assert main([*SMOKE, "data.val_size=0", "epochs=4", "scheduler.name=none", "early_stopping.monitor=lr",
                 "early_stopping.mode=max", "early_stopping.patience=2", f"output_dir={out}"]) == 0
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and "val_loss" not in history


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # SGD with lr 1e20: the first step throws the weights so far that the second loss is not finite
    out = tmp_path / "out"
    code = main([*SMOKE, "epochs=1", "optimizer.name=sgd", "optimizer.lr=1e20", "checkpoint.every_steps=1",
                 f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err == [f"error: the training loss became NaN or infinite at epoch 1 batch 2; lower "
                   f"optimizer.lr, set max_grad_norm, or set nonfinite=skip to drop such steps; the last good "
                   f"checkpoint is {out}/checkpoints/step-00000001 (latest)"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000001"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000001"]
    assert not (out / "history.csv").exists() and not (out / "model.safetensors").exists()
    state = load_file(str(out / "checkpoints" / "step-00000001" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_nonfinite_skip_drops_exactly_the_bad_steps():
    from train.engine.loop import Loop

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    calls = []

    def loss_with_a_nan_at_call_3(preds, labels):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(preds, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    loop = Loop(net, torch.optim.SGD(net.parameters(), lr=0.1), loss_with_a_nan_at_call_3, nonfinite="skip")
    before = []

    class Watch:
        loop = None

        def on_train_batch_end(self):
            before.append({k: v.clone() for k, v in net.state_dict().items()})

    history = loop.fit(1, dl, callbacks=[Watch()]).frame()
    assert history["skipped_steps"].tolist() == [1]
    assert all(torch.equal(before[1][k], before[2][k]) for k in before[1])  # batch 3 changed nothing
    assert not all(torch.equal(before[2][k], before[3][k]) for k in before[2])  # batch 4 trained again
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())
    assert history["loss"].notna().all()
