"""After training: a run's model back from its folder (from any working folder), predictions with a
trained run on 1 and 2 processes, and a reused output folder that holds another or a finished run."""

import csv
import os
import subprocess

import pandas as pd
import pytest
import torch
import yaml

from conftest import MNIST, PYTHON, ROOT, two_rank_env
from train.fronts.script import main

TINY = ["data.train_size=256", "data.val_size=128", f"data.path={MNIST}", "progress=false", "epochs=1"]


def snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_reused_folder_with_other_settings_is_refused_and_a_finished_run_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*TINY, f"output_dir={out}"]) == 0
    before, config = snapshot(out), (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*TINY, f"output_dir={out}", "optimizer.name=sgd", "metrics=[]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: output_dir {out} holds a run with other settings (metrics: "
                                               f"['accuracy'] there, [] now; optimizer.name: 'adam' there, 'sgd' now)")
    assert snapshot(out) == before and (out / "config.yaml").read_text() == config
    assert main([*TINY, f"output_dir={out}", "progress=true", "log_step_freq=7"]) == 0  # watching may change
    said = capsys.readouterr()
    assert " ".join(said.out.split()) == f"{out} holds a finished run of 1 epoch(s): nothing to train for epochs=1, " \
                                        f"no file changed; raise epochs to train on, or use another output_dir", said
    assert snapshot(out) == before
    assert main([*TINY, f"output_dir={out}", "epochs=2"]) == 0  # only more epochs: it trains on
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2


TRAINED_BY = {  # the run's training: one process, or two sharding the model (its checkpoints hold shards)
    "one process": ([PYTHON, str(ROOT / "train" / "main.py")], {}),
    "fsdp on two processes": ([str(ROOT / "launch" / "cpu2.sh"), "strategy=fsdp", "fsdp.min_num_params=1000"],
                              two_rank_env()),
}


@pytest.mark.slow
@pytest.mark.parametrize("trained_by", list(TRAINED_BY))
def test_a_run_comes_back_as_a_model_and_predicts_the_same_on_one_and_two_processes(tmp_path, trained_by):
    run = tmp_path / "digits"
    command, environment = TRAINED_BY[trained_by]
    done = subprocess.run([*command, "--config", "examples/digits/config.yaml", "epochs=3", "progress=false",
                           f"output_dir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=environment or None)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # one thread, as each of the two ranks has: convolutions split over two threads round differently
    one = subprocess.run([PYTHON, "-m", "train.predict", "../digits", "--out", str(tmp_path / "one.csv")],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))  # a relative run folder
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(ROOT / "launch" / "cpu2.sh"), str(ROOT / "train" / "predict.py"), str(run), "--out",
                          str(tmp_path / "two.csv")], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                         env=two_rank_env())
    assert two.returncode == 0, two.stdout + two.stderr
    rows = [list(csv.reader(open(tmp_path / f"{n}.csv"))) for n in ("one", "two")]
    assert rows[0] == rows[1] and len(rows[0]) == 1 + 359  # every validation sample once, in data order
    assert [r[0] for r in rows[0][1:]] == [str(i) for i in range(359)]
    last = pd.read_csv(run / "history.csv").iloc[-1]
    for name in ("one", "two"):
        metrics = pd.read_json(tmp_path / f"{name}.csv.metrics.json", typ="series")
        assert metrics["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)
        assert metrics["val_accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-12)
    # load_model from another working folder: the same outputs as the predict command's, bit for bit
    probe = ("import sys, torch, train\n"
             "from examples.digits.data import load\n"
             "model = train.load_model(sys.argv[1])\n"
             "best = train.load_model(sys.argv[1], checkpoint='best')  # the pointer followed\n"
             "last = train.load_model(sys.argv[1], checkpoint='latest').state_dict()  # the last epoch's end\n"
             "assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())\n"
             "x = torch.stack([load(val_fraction=0.2, seed=0)[1][i][0] for i in range(359)])\n"
             "with torch.no_grad(): print(repr(model(x).tolist()))\n")
    loaded = subprocess.run([PYTHON, "-c", probe, str(run)], cwd=elsewhere, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert loaded.returncode == 0, loaded.stderr
    outputs = torch.tensor(eval(loaded.stdout))
    from_csv = torch.tensor([[float(v) for v in r[3:]] for r in rows[0][1:]])
    assert torch.equal(outputs, from_csv)


@pytest.mark.slow
def test_the_class_front_loads_its_weights_back_bit_for_bit(tmp_path):
    script = ROOT / "tests" / "helpers" / "class_front_predict.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for extra in ([], ["--load"]):
        done = subprocess.run([PYTHON, str(script), str(tmp_path), *extra], cwd=tmp_path.parent, capture_output=True,
                              text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "predicted.pt"), torch.load(tmp_path / "loaded.pt"))
