"""`strategy: fsdp`: the model sharded over two real gloo ranks (FSDP2 through Accelerate), against
an unsharded plain-torch reference written here; the one guarded change to Accelerate's state, and
the errors a model that cannot be sharded gives."""

import re
import subprocess

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import MNIST, ROOT, flat, launch_two, two_rank_env

HELPER = ROOT / "tests" / "helpers" / "fsdp_check.py"


def mlp():
    """tests/helpers/fsdp_check.py's model, built the same way."""
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 3))


def reference(run: dict, global_batch: int = 64, epochs: int = 3):
    """Plain torch on one process: the same initial weights, Adam lr 0.01 on contiguous global batches
    in order (what two processes of 32 rows each take per step), the per-sample means of each epoch."""
    net = mlp()
    net.load_state_dict(run["initial"])
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    ce = torch.nn.functional.cross_entropy
    x, y, vx, vy = run["x"], run["y"], run["vx"], run["vy"]
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    for _ in range(epochs):
        net.train()
        loss_sum, hits = 0.0, 0
        for start in range(0, len(y), global_batch):
            xb, yb = x[start:start + global_batch], y[start:start + global_batch]
            out = net(xb)
            loss = ce(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            hits += int((out.argmax(1) == yb).sum())
        history["loss"].append(loss_sum / len(y))
        history["accuracy"].append(hits / len(y))
        net.eval()
        with torch.no_grad():
            out = net(vx)
        history["val_loss"].append(ce(out.double(), vy).item())
        history["val_accuracy"].append((out.argmax(1) == vy).double().mean().item())
    with torch.no_grad():
        outputs = net.eval()(vx)
    return net, history, outputs


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    done = launch_two(HELPER, out, "fsdp", 32)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, torch.load(out / "result.pt", weights_only=False), done.stdout


@pytest.mark.slow
def test_two_sharded_processes_train_like_one_unsharded_reference(sharded):
    out, run, _ = sharded
    net, expected, outputs = reference(run)
    saved = load_file(out / "run" / "model.safetensors")  # gathered on the main process, the model's own names
    assert set(saved) == set(net.state_dict())
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(saved[name], tensor, atol=1e-5, rtol=0, msg=name)
    for column, values in expected.items():
        assert run["history"][column] == pytest.approx(values, abs=1e-5), column
    assert run["scores"]["val_loss"] == pytest.approx(expected["val_loss"][-1], abs=1e-5)
    assert run["scores"]["val_accuracy"] == pytest.approx(expected["val_accuracy"][-1], abs=1e-12)
    torch.testing.assert_close(run["preds"], outputs, atol=1e-5, rtol=0)  # every row, in data order


@pytest.mark.slow
def test_each_process_holds_its_half_and_the_plan_says_so(sharded):
    out, _, stdout = sharded
    net = mlp()
    total = sum(p.numel() for p in net.parameters())
    # FSDP2 splits every parameter along its first dimension: rank 0 holds ceil(rows / 2) rows
    first = sum((p.shape[0] + 1) // 2 * p[0].numel() for p in net.parameters())
    line = re.search(r"strategy: fsdp \(FSDP2\) over 2 processes, (\d+) sharded unit\(s\).*?this process holds "
                     r"([\d,]+) of ([\d,]+) parameters", flat(stdout))
    assert line, stdout[-3000:]
    # two layers have over min_num_params=1000: their class, Linear, makes each of the three a unit; the root
    assert (int(line[1]), int(line[2].replace(",", "")), int(line[3].replace(",", ""))) == (4, first, total)
    assert "(each Linear, the classes of the modules of more than 1,000 parameters; the rest in the root)" in flat(
        stdout)
    held = [torch.load(out / f"held{rank}.pt") for rank in (0, 1)]
    assert [h["parameters"] for h in held] == [first, total - first]
    assert [h["optimizer"] for h in held] == [2 * first, 2 * (total - first)]  # Adam's two moments, sharded


PROBE = r"""
import torch
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
acc = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
import sys
sys.stdout.write(f"distributed type: {acc.distributed_type.value}\n")  # one write: the ranks' lines stay whole
"""


@pytest.mark.slow
def test_accelerate_still_drops_fsdp_on_cpu_ranks(tmp_path):
    """The reason for train.distributed.strategy.take_fsdp_on_cpu_ranks: when this fails, Accelerate
    takes its FSDP2 path on CPU ranks itself; remove that function and this test."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = launch_two(probe)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("MULTI_CPU") == 2 and "FSDP" not in done.stdout, done.stdout


def test_an_unshardable_model_is_one_error_before_anything_runs():
    from train.base.errors import ConfigError
    from train.distributed.strategy import choose_units
    from train.engine.devices import make_accelerator

    accelerator = make_accelerator(strategy="fsdp", fsdp={"wrap": ["GPT2Block"]}, cpu=True)
    with pytest.raises(ConfigError, match=r"fsdp.wrap names GPT2Block, which Sequential has no module of; "
                                          r"its classes: Linear, ReLU, Sequential"):
        choose_units(accelerator, mlp())
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ConfigError, match="has no trainable parameters to shard; use strategy=ddp"):
        choose_units(accelerator, frozen)


def test_an_unknown_fsdp_setting_is_named():
    from train.base.errors import ConfigError
    from train.distributed.strategy import fsdp_plugin

    with pytest.raises(ConfigError, match="unknown fsdp setting 'reshard_after_fwd'; did you mean "
                                          "'reshard_after_forward'"):
        fsdp_plugin({"reshard_after_fwd": False})


@pytest.mark.slow
def test_early_stopping_restores_the_best_weights_of_a_sharded_model_as_of_a_whole_one(tmp_path):
    """restore_best keeps the best epoch's weights gathered on the main process and puts them back
    into the shards: the same weights as a `ddp` run's."""
    common = ["model=tests.helpers.tiny:mlp", "data.source=python", "data.factory=tests.helpers.tiny:load",
              "data.num_classes=2", "batch_size=32", "epochs=3", "progress=false", "optimizer.lr=0.01",
              # the worst validation loss is the best here: an early epoch's weights come back
              "early_stopping.monitor=val_loss", "early_stopping.mode=max", "early_stopping.patience=5",
              "early_stopping.restore_best=true"]
    runs = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        done = subprocess.run([str(ROOT / "launch" / "cpu2.sh"), *common, f"strategy={strategy}",
                               "fsdp.min_num_params=100", f"output_dir={out}"], cwd=ROOT, env=two_rank_env(),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"restored the weights of epoch [12] \(val_loss", done.stdout), done.stdout
        runs[strategy] = load_file(out / "model.safetensors")
        latest = (out / "checkpoints" / "latest").read_text().strip()  # what a resume puts back: whole tensors
        saved = torch.load(out / "checkpoints" / latest / "callbacks.pt", weights_only=True)["early_stopping"]
        assert {k: v.shape for k, v in saved["best_weights"].items()} == {k: v.shape for k, v in runs[strategy].items()}
    for name, tensor in runs["ddp"].items():
        torch.testing.assert_close(runs["fsdp"][name], tensor, atol=1e-5, rtol=0, msg=name)


@pytest.mark.slow
def test_the_services_other_guarantees_hold_when_sharded(tmp_path):
    """Under strategy=fsdp on two processes: a callback's use of the run's model (a forward on every
    process) gives the ddp run's outputs; preflight checks the first batches through the sharded
    model; a NaN loss ends with 3 and its line; bf16 trains (Accelerate's mixed-precision policy)."""
    tiny = ["model=tests.helpers.tiny:mlp", "data.source=python", "data.factory=tests.helpers.tiny:load",
            "data.num_classes=2", "batch_size=32", "epochs=2", "progress=false", "fsdp.min_num_params=100"]
    mnist = ["epochs=1", "data.train_size=1024", "data.val_size=300", f"data.path={MNIST}", "progress=false",
             "strategy=fsdp"]

    def cpu2(*args):
        return subprocess.run([str(ROOT / "launch" / "cpu2.sh"), *args], cwd=ROOT, env=two_rank_env(),
                              capture_output=True, text=True, timeout=600)

    for strategy in ("ddp", "fsdp"):
        done = cpu2(*tiny, f"strategy={strategy}", "callbacks=[tests.helpers.cbs:Probe]",
                    f"output_dir={tmp_path / strategy}")
        assert done.returncode == 0, done.stdout + done.stderr
    for epoch in (1, 2):
        torch.testing.assert_close(torch.load(tmp_path / "fsdp" / f"probe{epoch}.pt"),
                                   torch.load(tmp_path / "ddp" / f"probe{epoch}.pt"), atol=1e-5, rtol=0)
    preflight = cpu2(*mnist, "preflight=true", f"output_dir={tmp_path / 'preflight'}")
    assert preflight.returncode == 0 and "preflight ok: 2 training" in preflight.stdout, preflight.stdout
    nan = cpu2(*mnist, "model=tests.helpers.bad_things:NaNAtSecondBatch", f"output_dir={tmp_path / 'nan'}")
    assert nan.returncode == 3, nan.stdout + nan.stderr
    assert "supervisor: exit 3 (the loss became NaN or infinite)" in nan.stderr + nan.stdout
    for precision in ("no", "bf16"):  # two epochs of 2048 samples, in fp32 and in bf16
        done = cpu2(*mnist, "epochs=2", "data.train_size=2048", f"mixed_precision={precision}",
                    f"output_dir={tmp_path / precision}")
        assert done.returncode == 0, done.stdout + done.stderr
    assert "fsdp, bf16" in done.stdout and "strategy: fsdp (FSDP2) over 2 processes" in flat(done.stdout)
    fp32, bf16 = (pd.read_csv(tmp_path / p / "history.csv")["loss"] for p in ("no", "bf16"))
    assert fp32.iloc[-1] < 1.8  # it trains (chance: ln 10 = 2.30); bf16 follows within its rounding
    assert bf16.tolist() == pytest.approx(fp32.tolist(), abs=0.05)
