"""Weight averaging (`ema:`, train.engine.averaging) against a hand computation from the trained
weights recorded after every optimizer step, on the class front and on two real processes; the
validation columns against plain-torch scores of the exported weights."""

import os
import subprocess

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import PYTHON, ROOT, flat
from tests.helpers.record_steps import RecordSteps, averaged_by_hand
from tests.helpers.small_runs import blobs, small_model


def close(mine: dict, reference: dict, tol: float = 1e-6) -> bool:
    return mine.keys() == reference.keys() and all(
        torch.allclose(mine[k].double(), reference[k].double(), atol=tol, rtol=0) for k in reference)


def test_the_class_front_averages_after_every_step_and_exports_the_averages(tmp_path):
    model = small_model()
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                  metrics_dict={"accuracy": train.metrics.accuracy}, ema={"decay": 0.8, "validate": "both"})
    recorder = RecordSteps()
    history = model.fit(2, blobs(), blobs(seed=1), callbacks=[recorder], output_dir=str(tmp_path), progress=False)
    assert len(recorder.steps) == 1 + 2 * 16  # the start and 16 optimizer steps an epoch
    raw, averaged = load_file(str(tmp_path / "model_raw.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(raw[k], recorder.steps[-1][k]) for k in raw)
    assert close(averaged, averaged_by_hand(recorder.steps, 0.8))
    assert not close(averaged, raw, 1e-3)  # the averages are not the trained weights
    # val_* score the averages, raw_val_* the trained weights
    assert {"val_loss", "val_accuracy", "raw_val_loss", "raw_val_accuracy"} <= set(history.columns)
    assert history["val_loss"].iloc[-1] != history["raw_val_loss"].iloc[-1]
    with_averages = model.evaluate(blobs(seed=1))  # evaluate() uses the averages too
    assert with_averages["val_loss"] == pytest.approx(history["val_loss"].iloc[-1], rel=1e-6)


def test_ema_mistakes_are_one_line():
    for ema, error in (({"decay": 1.5}, "ema.decay must be between 0 and 1"), ({"decy": 0.9}, "did you mean 'decay'"),
                       ({"decay": 0.9, "validate": "raw"}, "ema.validate"),
                       ({"decay": 0.9, "every_n_steps": 0}, "ema.every_n_steps must be a whole number >= 1")):
        with pytest.raises(train.UserError, match=error):
            small_model().compile(loss_func=torch.nn.CrossEntropyLoss(), ema=ema)
    with pytest.raises(train.UserError, match="ema does not average sharded weights yet"):
        small_model().compile(loss_func=torch.nn.CrossEntropyLoss(), ema={"decay": 0.9}, strategy="fsdp")


DIGITS = ["--config", "examples/digits/config.yaml", "epochs=2", "progress=false", "ema.decay=0.9",
          "ema.validate=both", "callbacks=[tests.helpers.record_steps:RecordSteps]"]


@pytest.mark.slow
def test_two_processes_average_as_by_hand_and_validate_the_averages(tmp_path):
    from conftest import need_module
    from tests.helpers.reference import scores_of_run

    need_module("sklearn")
    done = subprocess.run([str(ROOT / "launch" / "cpu2.sh"), *DIGITS, f"output_dir={tmp_path}"], cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ema: weights averaged with decay 0.9 after every optimizer step" in flat(done.stdout)
    steps = torch.load(tmp_path / "raw_steps.pt")
    raw, averaged = (load_file(str(tmp_path / f)) for f in ("model_raw.safetensors", "model.safetensors"))
    assert all(torch.equal(raw[k], steps[-1][k]) for k in raw)
    assert close(averaged, averaged_by_hand(steps, 0.9))
    row = pd.read_csv(tmp_path / "history.csv").iloc[-1]
    for prefix, weights in (("val_", "model.safetensors"), ("raw_val_", "model_raw.safetensors")):
        scores = scores_of_run(DIGITS, tmp_path, weights)
        assert row[f"{prefix}loss"] == pytest.approx(scores["val_loss"], abs=1e-5)
        assert row[f"{prefix}accuracy"] == pytest.approx(scores["val_accuracy"], abs=1e-9)
    # after training: the averages by default, and said; the trained weights when asked
    model = train.load_model(tmp_path)
    assert all(torch.equal(model.state_dict()[k], averaged[k]) for k in averaged)
    latest = train.load_model(tmp_path, checkpoint="latest")  # the epoch's end: its averages are the final ones
    assert all(torch.equal(latest.state_dict()[k], averaged[k]) for k in averaged)
    trained = train.load_model(tmp_path, averaged=False)
    assert all(torch.equal(trained.state_dict()[k], raw[k]) for k in raw)
    said = subprocess.run([PYTHON, "-m", "train.predict", str(tmp_path), "--out", str(tmp_path / "p.csv")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert said.returncode == 0 and "load_model: the averaged weights (ema)" in said.stdout, said.stdout + said.stderr


def test_a_checkpoint_without_averages_resumes_with_averages_from_its_weights(tmp_path, capsys):
    """A run trained without ema, continued with it: the averages start from the resumed weights (said
    once), then follow the hand computation from there."""
    model = small_model()
    model.fit(1, blobs(), output_dir=str(tmp_path), progress=False)
    model = small_model()
    model.compile(loss_func=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                  ema={"decay": 0.7})
    recorder = RecordSteps()
    capsys.readouterr()
    model.fit(2, blobs(), callbacks=[recorder], output_dir=str(tmp_path), progress=False)
    assert "holds no averaged weights (ema was off): the averages start from its weights" in flat(capsys.readouterr().out)
    assert len(recorder.steps) == 1 + 16  # the resumed weights, then epoch 2's steps
    assert close(load_file(str(tmp_path / "model.safetensors")), averaged_by_hand(recorder.steps, 0.7))
