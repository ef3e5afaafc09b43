"""Real models and data with real processes: padded and length-grouped variable-length batches
resume bit for bit after SIGKILL and give on two processes the validation numbers one process
computes; a `transformers` model trains on its own loss and on a loss over its logits, exactly
across two processes; the text example reaches its accuracy. Kill points are seeded and printed."""

import math
import os
import re
import subprocess

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import (TEST_SEED, PYTHON, ROOT, assert_same_run, flat, kill_group, latest_step, start_process, two_rank_env,
                      wait_for)

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

MAIN = ROOT / "train" / "main.py"
VARLEN = ["model=tests.helpers.sequences:MeanPool", "data.source=python", "data.factory=tests.helpers.sequences:load",
          "data.args={train_size: 3000, val_size: 501}", "data.num_classes=2", "data.collate=pad", "epochs=2",
          "batch_size=32", "checkpoint.every_steps=5", "progress=false"]
BERT = ["model=tests.helpers.hf_models:tiny_bert", "data.source=python", "data.factory=tests.helpers.sequences:load",
        "data.args={train_size: 512, val_size: 301, as_dicts: true}", "data.num_classes=2", "data.collate=pad",
        "epochs=1", "batch_size=32", "optimizer.lr=0.001", "progress=false"]
TEXT = ["--config", "examples/text/config.yaml"]


def script(out, *args, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run([PYTHON, str(MAIN), *args, f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def two_processes(out, *args) -> str:
    done = subprocess.run([str(ROOT / "launch" / "cpu2.sh"), *args, f"output_dir={out}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=two_rank_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "on 2 processes on CPUs (gloo)" in done.stdout
    return done.stdout


def killed_and_rerun(out, args, steps_per_epoch: int, rng) -> str:
    """SIGKILL at a seeded optimizer step of epoch 2, then the same command again."""
    target = rng.randint(steps_per_epoch + 3, 2 * steps_per_epoch - 10)
    where = f"(SIGKILL after step {target}; TEST_SEED={TEST_SEED})"
    cmd = [PYTHON, str(MAIN), *args, f"output_dir={out}"]
    proc = start_process(cmd, dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for(lambda: latest_step(out) >= target, proc, f"step {target} {where}")
    kill_group(proc)
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, f"{where}\n{rerun.stdout[-3000:]}{rerun.stderr[-3000:]}"
    assert "resuming from" in flat(rerun.stdout), where
    return where


def evaluate_alone(args, out) -> dict:
    """The final weights of `out` scored in plain torch on the config's validation data, each sample
    alone (`tests.helpers.reference`: the user's model and data factory, no project code)."""
    from tests.helpers.reference import scores_of_run

    return scores_of_run(args, out)


def assert_two_processes_match_one(out, args):
    """Two processes' reported validation numbers equal the plain-torch reference of the weights."""
    last = pd.read_csv(out / "history.csv").iloc[-1]
    alone = evaluate_alone(args, out)
    assert alone["val_accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-12)
    assert alone["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("grouped", [False, True], ids=["padded", "length-grouped"])
def test_variable_length_batches_resume_exactly_and_two_processes_match_one(tmp_path, grouped, rng):
    args = [*VARLEN, *(["data.group_by_length=true"] if grouped else [])]
    reference = script(tmp_path / "reference", *args)
    plan = flat(reference.stdout)
    if grouped:  # the plan prints both figures: grouped against plainly shuffled batches
        found = re.search(r"length-grouped batches: padding efficiency ([\d.]+) \(real / padded tokens, epoch 1; "
                          r"([\d.]+) shuffled\)", plan)
        assert found and float(found.group(1)) > float(found.group(2)) + 0.2, plan
    else:
        assert re.search(r"padding efficiency 0\.\d+ \(real / padded tokens, epoch 1\), lengths 5-60", plan), plan
    where = killed_and_rerun(tmp_path / "killed", args, math.ceil(3000 / 32), rng)
    assert_same_run(tmp_path / "killed", tmp_path / "reference", context=where)
    two_processes(tmp_path / "two", *args)
    assert_two_processes_match_one(tmp_path / "two", args)


@pytest.mark.parametrize("loss", ["model", "cross_entropy"])
def test_a_transformers_model_trains_on_its_own_loss_or_its_logits_exactly_across_two_processes(tmp_path, loss):
    from helpers.hf_models import tiny_bert

    args = [*BERT, f"loss={loss}"]
    two_processes(tmp_path / "two", *args)
    history = pd.read_csv(tmp_path / "two" / "history.csv")
    assert math.isfinite(history["loss"].iloc[0])
    assert_two_processes_match_one(tmp_path / "two", args)  # the last batch pads 13 samples with 19 duplicates
    tiny_bert().load_state_dict(load_file(str(tmp_path / "two" / "model.safetensors")))  # its own key names


def test_the_text_example_reaches_its_accuracy_and_its_weights_load_into_the_users_class(tmp_path):
    from examples.text.model import encoder
    from train.config.loading import load_config

    done = script(tmp_path / "text", *TEXT, f"data.args.tokenizer_dir={tmp_path / 'tokenizers'}")
    history = pd.read_csv(tmp_path / "text" / "history.csv")
    assert history["val_accuracy"].iloc[-1] >= 0.90, done.stdout
    # throughput in real tokens: the training samples' own lengths (padding left out), every epoch
    from examples.text.data import load

    train_set = load(tokenizer_dir=str(tmp_path / "tokenizers"))["train"]
    tokens = sum(len(train_set[i]["input_ids"]) for i in range(len(train_set)))
    assert (history["tokens_per_s"] * history["epoch_s"]).tolist() == pytest.approx([tokens] * len(history), rel=1e-9)
    assert (history["max_memory_mb"] > 100).all()  # a process holding torch and transformers
    model = encoder(**load_config(ROOT / "examples" / "text" / "config.yaml").model_args)
    model.load_state_dict(load_file(str(tmp_path / "text" / "model.safetensors")))  # no wrapper prefix
    from transformers import BertForSequenceClassification

    exported = BertForSequenceClassification.from_pretrained(tmp_path / "text" / "hf")  # save_pretrained's folder
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in model.state_dict().items())


def test_the_text_example_resumes_exactly_and_two_processes_match_one(tmp_path, rng):
    args = [*TEXT, "data.args.train_size=1600", "data.args.val_size=301", "epochs=2", "checkpoint.every_steps=5",
            f"data.args.tokenizer_dir={tmp_path / 'tokenizers'}"]  # one tokenizer for every run here
    script(tmp_path / "reference", *args)
    where = killed_and_rerun(tmp_path / "killed", args, math.ceil(1600 / 32), rng)
    assert_same_run(tmp_path / "killed", tmp_path / "reference", context=where)
    two_processes(tmp_path / "two", *args)
    assert_two_processes_match_one(tmp_path / "two", args)


def test_a_class_front_script_with_a_mistake_ends_with_one_line_and_exit_2(tmp_path):
    done = subprocess.run([PYTHON, str(ROOT / "tests" / "helpers" / "class_front_mistake.py"), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and \
        done.stderr.startswith("error: training samples have different shapes ((9,) and ("), done.stderr
    assert not (tmp_path / "out").exists()
