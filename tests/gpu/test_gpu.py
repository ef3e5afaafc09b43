"""On a CUDA GPU (skipped elsewhere, with the reason): exact resume with the defaults, mixed
precision, the in-memory fast path on the device, and the step in one CUDA graph (`graphs`: equal
to an eager loop, resumed bit for bit, with bf16, and eager where a schedule changes its constants). `bench/gpu.sh` runs these on a GPU machine
(`pytest -m gpu`); on a CPU machine they say why they skip."""

import os
import subprocess

import pandas as pd
import pytest
import torch

from conftest import MNIST, PYTHON, ROOT, assert_same_run, flat

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs these)")]

MAIN = ROOT / "train" / "main.py"
# 100 optimizer steps an epoch; a checkpoint every 7; the killer callback a no-op unless told a step
RUN = ["epochs=2", "data.train_size=12800", "data.val_size=2000", f"data.path={MNIST}", "checkpoint.every_steps=7",
       "seed=11", "progress=false", "callbacks=[tests.helpers.kill_at:KillAt]"]


def main(*args, kill_at=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TEST_KILL_AT_STEP=str(kill_at or ""))
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)  # the process sets it itself (as `python train/main.py` does)
    return subprocess.run([PYTHON, str(MAIN), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_run_killed_mid_epoch_and_run_again_equals_an_uninterrupted_one_bit_for_bit_with_the_defaults(tmp_path, rng):
    reference = tmp_path / "reference"
    done = main(*RUN, f"output_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deterministic: on" in flat(done.stdout)
    # the tutorial CNN's AdaptiveMaxPool2d has no deterministic backward on CUDA: named once, not warned
    notes = [line for line in done.stdout.splitlines() if line.startswith("note: deterministic:")]
    assert len(notes) <= 1 and "does not have a deterministic implementation" not in done.stderr, done.stdout

    again = tmp_path / "again"  # two runs with the same seed: the same bits
    assert main(*RUN, f"output_dir={again}").returncode == 0
    assert_same_run(again, reference, context="(two uninterrupted runs)")

    step = rng.randint(110, 180)  # in epoch 2, past a checkpoint and far from the end
    killed = tmp_path / "killed"
    first = main(*RUN, f"output_dir={killed}", kill_at=step)
    assert first.returncode == -9, (first.returncode, first.stderr[-3000:])  # SIGKILLed at that step
    second = main(*RUN, f"output_dir={killed}")
    assert second.returncode == 0 and "resuming from" in second.stdout, second.stderr[-3000:]
    assert_same_run(killed, reference, context=f"(killed at step {step})")


def test_deterministic_false_is_said_in_the_plan_and_trains(tmp_path):
    done = main(*RUN[:-1], "epochs=1", "deterministic=false", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deterministic: off: cuDNN autotunes its kernels" in flat(done.stdout)
    assert pd.read_csv(tmp_path / "history.csv")["val_accuracy"].iloc[-1] > 0.9


@pytest.mark.parametrize("precision,words", [("bf16", "bf16 autocast"), ("fp16", "fp16 autocast with a grad scaler")])
def test_mixed_precision_trains_on_the_gpu(tmp_path, precision, words):
    done = main(*RUN[:-1], "epochs=1", f"mixed_precision={precision}", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"on cuda:0, {words}" in flat(done.stdout) or f"on cuda, {words}" in flat(done.stdout), done.stdout
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["val_accuracy"].iloc[-1] > 0.9 and history["loss"].notna().all(), history


def test_the_in_memory_fast_path_holds_its_tensors_on_the_gpu():
    import train
    from train.data.loaders import make_loaders

    cfg = train.load_config(None, [f"data.path={MNIST}", "data.train_size=4096", "data.val_size=512"])
    loaders = make_loaders(cfg, device="cuda")
    for loader in (loaders.train, loaders.val):
        held = [v for v in vars(loader.dataset).values() if isinstance(v, torch.Tensor)]
        assert held and all(t.device.type == "cuda" for t in held), [(t.shape, t.device) for t in held]
        x, y = next(iter(loader))
        assert x.device.type == "cuda" and y.device.type == "cuda"


def test_a_users_tensordataset_is_served_from_the_gpu_through_the_class_front(tmp_path, capsys):
    import train

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2048, 16, generator=g), torch.randint(0, 4, (2048,), generator=g)
    for name, data in (("on the host", (x, y)), ("already on the GPU", (x.cuda(), y.cuda()))):
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        model = train.Model(net)
        model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=1e-3))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=64, shuffle=True)
        history = model.fit(2, loader, output_dir=tmp_path / name.replace(" ", "-"), progress=False)
        out = " ".join(capsys.readouterr().out.split())
        assert "in-memory fast path: your DataLoader's TensorDataset, 2048 samples" in out and "on cuda" in out, out
        assert history["loss"].notna().all() and history["loss"].iloc[-1] < history["loss"].iloc[0], (name, history)


# ---------------------------------------------------------------- the step in one CUDA graph
def test_the_graphed_step_equals_a_hand_written_eager_loop_with_the_same_optimizer(capsys):
    """102 steps (2 epochs of 50 whole batches and a partial one, which runs eagerly), a BatchNorm
    conv net, Adam under a one-cycle schedule stepped per batch (its lr changes every step; momentum
    not cycled, which a graph would hold as a constant):
    the class front with graphs=True against plain torch, eager, with the same Adam implementation."""
    import copy

    import train

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 10)).cuda()
    reference = copy.deepcopy(net)
    x, y = torch.randn(50 * 64 + 37, 1, 12, 12, device="cuda"), torch.randint(0, 10, (50 * 64 + 37,), device="cuda")
    steps = 2 * 51

    def schedule(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps, cycle_momentum=False)

    opt = torch.optim.Adam(reference.parameters(), lr=1e-3, capturable=True)
    sched = schedule(opt)
    losses = []
    for _ in range(2):
        total = 0.0
        for i in range(0, len(y), 64):
            loss = torch.nn.functional.cross_entropy(reference(x[i:i + 64]), y[i:i + 64])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            total += loss.item() * len(y[i:i + 64])
        losses.append(total / len(y))

    model = train.Model(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    model.compile(torch.nn.CrossEntropyLoss(), optimizer, lr_scheduler=schedule(optimizer), scheduler_interval="step",
                  graphs=True)
    history = model.fit(2, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64))
    said = " ".join(capsys.readouterr().out.split())
    assert "note: graphs: on" in said, said
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert (p - q).abs().max().item() <= 1e-6, name
    for name, b in net.named_buffers():  # BatchNorm's running statistics, updated inside the graph
        assert torch.allclose(b.float(), dict(reference.named_buffers())[name].float(), atol=1e-6), name
    assert history["loss"].tolist() == pytest.approx(losses, abs=1e-6)


GRAPHED = [*RUN, "graphs=true", "data.train_size=12850", "scheduler.name=onecycle", "scheduler.interval=step",
           "scheduler.args={cycle_momentum: false}"]


def test_a_graphed_run_killed_and_run_again_equals_an_uninterrupted_one_bit_for_bit(tmp_path, rng):
    reference = tmp_path / "reference"
    done = main(*GRAPHED, f"output_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "graphs: on" in flat(done.stdout) and "capturable" in flat(done.stdout), done.stdout
    assert pd.read_csv(reference / "history.csv")["val_accuracy"].iloc[-1] > 0.9
    step = rng.randint(115, 190)  # in epoch 2 (101 steps an epoch: 100 graphed, the last partial one eager)
    killed = tmp_path / "killed"
    first = main(*GRAPHED, f"output_dir={killed}", kill_at=step)
    assert first.returncode == -9, (first.returncode, first.stderr[-3000:])
    second = main(*GRAPHED, f"output_dir={killed}")
    assert second.returncode == 0 and "resuming from" in second.stdout, second.stderr[-3000:]
    assert_same_run(killed, reference, context=f"(graphs, killed at step {step})")


@pytest.mark.parametrize("precision,graphed", [("bf16", True), ("fp16", False)])
def test_graphs_with_mixed_precision(tmp_path, precision, graphed):
    done = main(*GRAPHED, "epochs=1", "callbacks=[]", f"mixed_precision={precision}", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    said = flat(done.stdout)
    assert ("graphs: on" in said) == graphed and (graphed or "fp16's loss scaler" in said), done.stdout
    assert pd.read_csv(tmp_path / "history.csv")["val_accuracy"].iloc[-1] > 0.9


def test_a_schedule_that_changes_adams_betas_every_step_goes_on_eagerly_with_one_warning(tmp_path):
    # OneCycleLR cycles Adam's betas by default: a graph would hold them as constants
    done = main(*RUN[:-1], "epochs=1", "graphs=true", "scheduler.name=onecycle", "scheduler.interval=step",
                f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert flat(done.stderr).count("the run goes on eagerly") == 1 and "betas" in done.stderr, done.stderr[-3000:]
    assert pd.read_csv(tmp_path / "history.csv")["val_accuracy"].iloc[-1] > 0.9


def test_an_out_of_memory_error_leaves_the_allocators_history_and_the_history_has_mfu_and_memory(tmp_path):
    """profile.memory=true on a GPU: an out-of-memory error in training leaves profile/oom-rank0.pickle;
    a run's history has mfu (an H100/H200 is in the table) and CUDA's peak allocated memory."""
    import train
    from tests.helpers.small_runs import blobs

    train.seed_everything(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    model = train.Model(net)
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=0.01))
    row = model.fit(1, blobs(), output_dir=str(tmp_path / "plain"), progress=False).iloc[-1]
    assert 0 < row["max_memory_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
    if any(name in torch.cuda.get_device_name(0) for name in ("H100", "H200", "A100")):
        assert 0 < row["mfu"] < 1

    class Exhaust(train.Callback):
        def on_train_batch_end(self, batch):
            if batch == 4:
                torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # a petabyte

    model = train.Model(net)  # a fresh front: fit's epochs are a total
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=0.01),
                  profile={"steps": 2, "memory": True})
    with pytest.raises((torch.OutOfMemoryError, SystemExit)):
        model.fit(1, blobs(), output_dir=str(tmp_path / "oom"), progress=False, callbacks=[Exhaust()])
    assert (tmp_path / "oom" / "profile" / "oom-rank0.pickle").stat().st_size > 0
