"""Your own model and data through the script: import paths in the config, a data factory, any
supervised task (classification and regression), with the service's guarantees (exact metrics
over processes, exact resume, one-line errors). The examples in examples/ are the subjects."""

import os

import pandas as pd
import pytest

from conftest import (TEST_SEED, PYTHON, ROOT, assert_same_run, flat, kill_group, latest_step, launch_two, need_module, run_one,
                      start_process, wait_for)
from train.fronts.script import main

need_module("sklearn")
MAIN = ROOT / "train" / "main.py"
DIGITS = ["--config", "examples/digits/config.yaml", "progress=false"]
DIABETES = ["--config", "examples/diabetes/config.yaml", "progress=false"]


def evaluate_alone(config_args, out):
    """The validation numbers of `out`'s final weights, computed in plain torch with the example's own
    model and data factory (`tests.helpers.reference`: no project code)."""
    from tests.helpers.reference import scores_of_run

    return scores_of_run(config_args, out)


@pytest.mark.slow
def test_digits_reaches_95_percent_and_two_processes_measure_the_same(tmp_path):
    one = run_one(MAIN, *DIGITS, f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    assert "plan: examples.digits.model:Net on 1 process" in one.stdout
    assert "in-memory fast path: 1438 training samples" in flat(one.stdout)
    history = pd.read_csv(tmp_path / "one" / "history.csv")
    assert history["val_accuracy"].iloc[-1] >= 0.95, history

    two = launch_two(MAIN, *DIGITS, "epochs=6", f"output_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stdout + two.stderr
    last = pd.read_csv(tmp_path / "two" / "history.csv").iloc[-1]
    alone = evaluate_alone(DIGITS, tmp_path / "two")
    assert alone["val_loss"] == pytest.approx(last["val_loss"], abs=1e-6)
    assert alone["val_accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_digits_killed_mid_run_resumes_bit_for_bit(tmp_path, rng):
    args = [*DIGITS, "epochs=4", "checkpoint.every_steps=3"]  # 23 optimizer steps an epoch
    reference = run_one(MAIN, *args, f"output_dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr
    target = rng.randint(24, 60)
    where = f"(kill after step {target}; TEST_SEED={TEST_SEED})"
    out = tmp_path / "out"
    proc = start_process([PYTHON, str(MAIN), *args, f"output_dir={out}"], dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for(lambda: latest_step(out) >= target, proc, f"a checkpoint at step {target} {where}")
    kill_group(proc)
    again = run_one(MAIN, *args, f"output_dir={out}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in flat(again.stdout), where
    assert_same_run(out, tmp_path / "reference", epochs=4, context=where)


@pytest.mark.slow
def test_diabetes_is_regression_with_exact_metrics_over_two_processes(tmp_path):
    args = [*DIABETES, "epochs=8"]
    two = launch_two(MAIN, *args, f"output_dir={tmp_path}")
    assert two.returncode == 0, two.stdout + two.stderr
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns[:6]) == ["epoch", "loss", "mae", "val_loss", "val_mae", "lr"]
    assert not any("accuracy" in c for c in history.columns)
    assert "accuracy" not in two.stdout
    assert history["val_mae"].iloc[-1] < history["val_mae"].iloc[0]  # it learns
    alone = evaluate_alone(args, tmp_path)  # 88 validation samples: an uneven split over 2 processes
    last = history.iloc[-1]
    assert alone["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert alone["val_mae"] == pytest.approx(last["val_mae"], rel=1e-6)


HELPERS = "tests.helpers.bad_things"
CASES = {
    "wrong module": (["model=examples.digits.modle:Net"],
                     "cannot import 'examples.digits.modle:Net': no module named 'examples.digits.modle'; "
                     "did you mean 'examples.digits.model'?"),
    "wrong attribute": (["model=examples.digits.model:Nett"],
                        "cannot import 'examples.digits.model:Nett': module 'examples.digits.model' has no "
                        "attribute 'Nett'; did you mean 'Net'?"),
    "unknown built-in loss": (["loss=cross_entropi"], "unknown loss 'cross_entropi' (did you mean 'cross_entropy'?)"),
    "model arguments it does not take": (["model_args.hiden=3"], "model 'examples.digits.model:Net' does not take"),
    "a factory that returns a number": ([f"data.factory={HELPERS}:not_data", "data.args={}"],
                                        f"data factory '{HELPERS}:not_data' returned a int; return the training"),
    "a factory that returns a list": ([f"data.factory={HELPERS}:one_dataset_and_a_list", "data.args={}"],
                                      "returned a list as the validation set; return torch Datasets: map-style"),
    "a model that cannot take the data's shape": (["model=tutorial_cnn", "model_args={}"],
                                                  "model tutorial_cnn cannot take the training data: an input of "
                                                  "shape (1, 8, 8) gives RuntimeError"),
    "a factory that raises": ([f"data.factory={HELPERS}:missing_file", "data.args={}"],
                              f"data factory '{HELPERS}:missing_file' raised FileNotFoundError: /data/blobs.npz"),
    "a metric that raises on the first batch": ([f"metrics=[accuracy, '{HELPERS}:broken_metric']"],
                                                "metric 'broken_metric' cannot take model "
                                                "examples.digits.model:Net's output (10,) with the labels (): "
                                                "ValueError: this metric is broken"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_in_your_own_code_is_one_line(case, tmp_path, capsys):
    args, expected = CASES[case]
    out = tmp_path / "out"
    code = main([*DIGITS, *args, f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]
    assert not out.exists(), f"left behind: {list(out.rglob('*'))}"


@pytest.mark.launches  # one named subprocess in the fast tier
def test_help_shows_the_values_of_the_config_it_would_run():
    done = run_one(MAIN, "--config", "examples/digits/config.yaml", "epochs=7", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert "model = 'examples.digits.model:Net'" in text and "epochs = 7" in text
    assert "scheduler.name = 'cosine'" in text and "data.factory = 'examples.digits.data:load'" in text
    assert "an import path 'package.module:Name'" in flat(text)


@pytest.mark.slow
def test_the_custom_fit_example_trains_and_a_rerun_resumes(tmp_path):
    script = ROOT / "examples" / "custom_fit.py"
    env = {"TRAIN_OUTPUT_DIR": str(tmp_path)}
    first = run_one(script, **env)
    assert first.returncode == 0, first.stderr
    assert "Total params:" in first.stdout and float(first.stdout.split()[-1]) >= 0.95
    again = run_one(script, **env)
    assert again.returncode == 0, again.stderr
    assert "holds a finished run of 20 epoch(s): nothing to train for epochs=20, no file changed" in flat(again.stdout)


def test_a_users_tensordataset_behind_a_plain_dataloader_takes_the_in_memory_path_in_the_same_order(monkeypatch,
                                                                                                 capsys, tmp_path):
    """The class front serves a plain `DataLoader(TensorDataset(x, y), shuffle=True)` by indexing
    (no sample is collated one by one) and trains on the very batches, in the very order, that the
    same data behind a loader it must take as given (a collate of the user's own) gives."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset, default_collate

    import train

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,), generator=g)

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear, self.seen = torch.nn.Linear(6, 3), []

        def forward(self, inputs):
            if self.training:
                self.seen.append(inputs.detach().clone())
            return self.linear(inputs)

    def fit(loader, out):
        net = Recorder()
        model = train.Model(net)
        model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
        history = model.fit(2, loader, log_step_freq=100, seed=5, output_dir=out)  # (a plan is printed)
        return net, history

    per_sample = []
    real_getitem = TensorDataset.__getitem__
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: per_sample.append(i) or real_getitem(self, i))
    fast, fast_history = fit(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), tmp_path / "fast")
    plan = capsys.readouterr().out
    assert per_sample == []  # not one sample collated on its own
    assert "in-memory fast path: your DataLoader's TensorDataset, 100 samples" in " ".join(plan.split()), plan
    slow, slow_history = fit(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                                        collate_fn=lambda samples: default_collate(samples)), tmp_path / "as-given")
    assert len(per_sample) >= 200  # as given: two epochs of 100 samples, one by one (and the checks' few)
    assert len(fast.seen) == len(slow.seen) == 14  # 7 batches an epoch (the last of 4), 2 epochs
    assert all(torch.equal(a, b) for a, b in zip(fast.seen, slow.seen))  # the same batches in the same order
    assert not torch.equal(fast.seen[0], fast.seen[7][:16])  # and shuffled anew each epoch
    assert torch.equal(fast.linear.weight, slow.linear.weight)
    assert fast_history["loss"].tolist() == slow_history["loss"].tolist()
