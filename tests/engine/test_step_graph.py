"""`graphs: true` where no GPU is: the step runs eagerly, exactly as without the key, and the plan
says so in one line; the optimizer the config builds for a GPU. (The captured step itself, equal to
eager and resumed exactly, is in tests/gpu.)"""

import contextlib
import io

import pytest
import torch
from safetensors.torch import load_file

import train
from helpers.tiny import BATCH, data, mlp


def script_run(tmp_path, *extra):
    from train.fronts.script import main

    out = io.StringIO()
    args = ["model=helpers.tiny:mlp", "data.source=python", "data.factory=helpers.tiny:data", "data.val_size=0",
            "data.num_classes=2", "epochs=2", f"batch_size={BATCH}", "optimizer.name=adam", "scheduler.name=onecycle",
            "scheduler.interval=step", "progress=false", "checkpoint.enabled=false", f"output_dir={tmp_path}", *extra]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue(), load_file(tmp_path / "model.safetensors"), (tmp_path / "history.csv").read_text()


def test_graphs_on_a_cpu_train_eagerly_and_say_so_once(tmp_path):
    said, weights, history = script_run(tmp_path / "graphs", "graphs=true")
    _, eager_weights, eager_history = script_run(tmp_path / "eager", "graphs=false")
    lines = [line for line in said.splitlines() if "graphs:" in line]
    assert len(lines) == 1 and "CUDA graphs need an NVIDIA GPU; on CPU the step runs eagerly" in lines[0], said
    assert "optimizer:" not in said  # the implementation is named on a GPU only
    assert history.splitlines()[1:] and [r.split(",")[:4] for r in history.splitlines()] == \
        [r.split(",")[:4] for r in eager_history.splitlines()]
    assert weights.keys() == eager_weights.keys()
    assert all(torch.equal(weights[k], eager_weights[k]) for k in weights)


def test_the_class_front_takes_graphs_and_says_why_not():
    net = mlp()
    model = train.Model(net)
    model.compile(torch.nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-3), graphs=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = model.fit(1, torch.utils.data.DataLoader(data(), batch_size=BATCH))
    assert len(history) == 1 and "graphs: CUDA graphs need an NVIDIA GPU" in out.getvalue()
    with pytest.raises(train.UserError, match="unknown option 'graph'.*graphs"):
        model.compile(torch.nn.CrossEntropyLoss(), graph=True)


@pytest.mark.parametrize("name, graphed, expected", [
    ("adam", False, {"fused": True}), ("adam", True, {"capturable": True}), ("adamw", True, {"capturable": True}),
    ("sgd", False, {"fused": True}), ("sgd", True, {"fused": True}), ("rmsprop", True, {"capturable": True})])
def test_a_built_in_optimizer_takes_its_fastest_cuda_implementation(name, graphed, expected):
    from train.config.schema import OptimizerConfig
    from train.fronts.building import OPTIMIZERS, cuda_implementation

    from train.fronts.building import build_optimizer

    assert cuda_implementation(OPTIMIZERS[name], graphed) == expected
    net = mlp()
    on_gpu = build_optimizer(OptimizerConfig(name=name), net.parameters(), "cuda", graphed)  # built, not stepped
    assert all(on_gpu.param_groups[0][k] == v for k, v in expected.items())
    on_cpu = build_optimizer(OptimizerConfig(name=name), net.parameters(), "cpu", graphed)
    assert not on_cpu.param_groups[0].get("fused") and not on_cpu.param_groups[0].get("capturable")
    # the user's own choice of implementation stands, and nothing of ours is added to it
    given = build_optimizer(OptimizerConfig(name=name, args={"foreach": False}), net.parameters(), "cuda", graphed)
    assert given.param_groups[0]["foreach"] is False
    assert not given.param_groups[0].get("fused") and not given.param_groups[0].get("capturable")
