"""Language models on two real gloo ranks: a causal language model's token-level loss reported and
trained on, streams split across processes and resumed exactly, a pretrained model fine-tuned with
LoRA adapters, and the examples/lm example. Every number is held to a plain-torch reference computed
here (`tests.helpers.lm.token_loss`: each sample alone, no padding, summed token losses over their
count), never to the project's own loop."""

import collections
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, ROOT, assert_same_run, flat, latest_step, rank_processes, start_process, wait_for

pytestmark = pytest.mark.slow  # real processes: `make test-fast` leaves these out

LM = ["--config", str(ROOT / "tests" / "helpers" / "lm.yaml")]
MAIN = ROOT / "train" / "main.py"
CPU2 = ROOT / "launch" / "cpu2.sh"


def env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def cpu2(*args, timeout=600) -> subprocess.CompletedProcess:
    """launch/cpu2.sh (two gloo ranks under the supervisor), output merged."""
    return subprocess.run([str(CPU2), *map(str, args)], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def model_from(out: Path):
    """The run's final weights in a fresh `tiny_gpt2` (plain transformers, no project code)."""
    from tests.helpers.lm import tiny_gpt2

    model = tiny_gpt2()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    return model


def validation_samples(val_size=101, seed=0):
    from tests.helpers.lm import load

    val = load(512, val_size, seed)[1]
    return [val[i] for i in range(len(val))]


def last_row(out: Path) -> pd.Series:
    return pd.read_csv(out / "history.csv").iloc[-1]


def test_a_causal_lm_reports_the_token_level_loss_on_two_processes(tmp_path):
    """val_loss is the sum of token losses over the target tokens, whatever the batch size, the
    grouping, the metrics or the process count (the crash this replaces: gathering logits of different
    lengths at the first validation)."""
    from tests.helpers.lm import token_loss

    grouped = tmp_path / "grouped"
    done = cpu2(*LM, "data.group_by_length=true", "metrics=[perplexity]", f"output_dir={grouped}")
    assert done.returncode == 0, done.stdout
    assert "Removed shared tensor" not in done.stdout and "Writing model shards" not in done.stdout  # no noise
    samples = validation_samples()  # built once: every check below reads the same samples
    reference = token_loss(model_from(grouped), samples)  # plain torch, sample by sample
    row = last_row(grouped)
    assert row["val_loss"] == pytest.approx(reference, abs=1e-6)
    assert row["val_perplexity"] == pytest.approx(math.exp(reference), rel=1e-6)
    for batch in (1, 64):  # the same weights evaluated in other batches, on two processes
        out = tmp_path / f"predict-{batch}.csv"
        done = cpu2(ROOT / "train" / "predict.py", grouped, "--batch-size", batch, "--out", out)
        assert done.returncode == 0, done.stdout
        assert json.loads(Path(f"{out}.metrics.json").read_text())["val_loss"] == pytest.approx(reference, abs=1e-6)
        rows = list(csv.DictReader(open(out)))  # one row per sample in data order, cut to its own length
        # a causal LM predicts each next token: a sample of n tokens has n - 1 targets, its tokens 1..n-1
        assert [int(r["length"]) for r in rows] == [len(s["input_ids"]) - 1 for s in samples]
        assert [r["target"] for r in rows] == [" ".join(map(str, s["input_ids"][1:].tolist())) for s in samples]

    plain = tmp_path / "plain"  # no grouping, no metric: nothing is gathered at all
    done = cpu2(*LM, "device.peak_tflops=0.05", f"output_dir={plain}")
    assert done.returncode == 0, done.stdout
    row = last_row(plain)
    assert row["val_loss"] == pytest.approx(token_loss(model_from(plain), samples), abs=1e-6)
    # throughput in real tokens (padding excluded): the training samples' own lengths, counted here
    from tests.helpers.lm import load

    train_tokens = sum(len(sample["input_ids"]) for sample in load(512, 101, 0)[0])
    assert row["tokens_per_s"] * row["epoch_s"] == pytest.approx(train_tokens, rel=1e-9)
    assert row["mfu"] == pytest.approx(row["flops_per_s"] / (0.05e12 * 2), rel=1e-12)  # 2 processes' devices
    assert "mfu: the history's flops_per_s over the peak of every process's device: 0.05 TFLOP/s each" in flat(done.stdout)
    # each process's peak resident set, in MiB: a process holding torch (hundreds of MB), far below the machine's
    assert 100 < row["max_memory_mb"] < 8192

    preflight = cpu2(*LM, "preflight=true", f"output_dir={tmp_path / 'preflight'}")
    assert preflight.returncode == 0 and "preflight ok" in preflight.stdout, preflight.stdout


TWO_WAYS = {  # how two processes take the global batch of 32 that one process takes whole
    "accumulation": ["batch_size=8", "gradient_accumulation_steps=2"],
    "sharded (fsdp)": ["batch_size=16", "strategy=fsdp"],  # wrapped by its own layer class, GPT2Block
}


@pytest.mark.parametrize("way", list(TWO_WAYS))
def test_two_processes_take_the_steps_of_one_with_the_whole_batch(tmp_path, way):
    """Each optimizer step trains on the sum of its token losses over the global batch's target
    tokens: 2 processes x 8 samples x accumulation 2, or 2 sharded processes x 16 samples, step as 1
    process with batches of 32."""
    common = [*LM, "steps_per_epoch=4", "data.val_size=0", "checkpoint.enabled=false"]
    one = subprocess.run([PYTHON, str(MAIN), *common, "batch_size=32", f"output_dir={tmp_path / 'one'}"], cwd=ROOT,
                         env=env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = cpu2(*common, *TWO_WAYS[way], f"output_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stdout
    from accelerate.utils import set_seed

    from tests.helpers.lm import tiny_gpt2

    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    set_seed(0)  # what the runs start from: the config's seed, then the model
    start = tiny_gpt2().state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert last_row(tmp_path / "one")["loss"] == pytest.approx(last_row(tmp_path / "two")["loss"], rel=1e-6)
    if "strategy=fsdp" in TWO_WAYS[way]:
        from transformers import GPT2LMHeadModel

        assert re.search(r"strategy: fsdp \(FSDP2\) over 2 processes, \d+ sharded unit\(s\) \(each GPT2Block; the "
                         r"rest in the root\)", flat(two.stdout)), two.stdout
        exported = GPT2LMHeadModel.from_pretrained(tmp_path / "two" / "hf").state_dict()  # the gathered weights
        assert all(torch.equal(exported[k], b[k]) for k in b)


# ------------------------------------------------------------------------------------------ streams
# 513 training samples: shares of 257 and 256, 17 and 16 batches of 16, so that rank 1 takes the last
# round of every epoch as a shadow (and the 97 validation samples, 4 and 3 batches, likewise)
STREAM = [*LM, "epochs=2", "metrics=[perplexity]", "data.factory=tests.helpers.streams:load",
          "data.collate=tests.helpers.streams:RecordingPad",
          "data.args={train_size: 513, val_size: 97}"]


def seen_ids(folder: Path) -> collections.Counter:
    return collections.Counter(int(line) for f in folder.glob("ids-*.txt") for line in f.read_text().split())


def first_two(factory: str, train_size: int = 513, val_size: int = 97) -> list[int]:
    """The ids the check before training reads (the first two samples of each process's share of the
    stream): the samples g = p, p + 2 of the epoch-0 order for a stream of our own, the first two of
    `datasets`' own split for a Hugging Face one."""
    import importlib

    from datasets.distributed import split_dataset_by_node

    stream = getattr(importlib.import_module("tests.helpers.streams"), factory)(train_size, val_size)["train"]
    stream.set_epoch(0)
    if factory == "load":
        order = [s["id"] for s in stream]
        return [order[0], order[2], order[1], order[3]]
    return [s["id"] for p in (0, 1) for s, _ in zip(split_dataset_by_node(stream, rank=p, world_size=2), range(2))]


@pytest.mark.parametrize("factory", ["load", "load_hf"])
def test_a_stream_is_split_across_processes_without_duplicates_or_gaps(tmp_path, factory):
    from tests.helpers.lm import token_loss
    from tests.helpers.streams import VAL_IDS

    ids = tmp_path / "ids"
    ids.mkdir()
    out = tmp_path / "out"
    done = cpu2(*STREAM, f"data.factory=tests.helpers.streams:{factory}", f"data.collate_args={{folder: {ids}}}",
                f"output_dir={out}")
    assert done.returncode == 0, done.stdout
    assert "length unknown: an epoch ends when the stream does" in flat(done.stdout)
    seen = seen_ids(ids)
    checked = collections.Counter(first_two(factory))  # the check before training, on each process
    assert {i: seen[i] - checked[i] for i in range(513)} == {i: 2 for i in range(513)}  # once per epoch
    assert {i: seen[VAL_IDS + i] for i in range(97)} == {i: 2 for i in range(97)}
    assert set(seen) == set(range(513)) | {VAL_IDS + i for i in range(97)}
    assert last_row(out)["val_loss"] == pytest.approx(token_loss(model_from(out), validation_samples(97)), abs=1e-6)


def test_a_stream_killed_mid_epoch_resumes_exactly(tmp_path):
    """A rank SIGKILLed in epoch 2 (the supervisor restarts the job: the stream is read again up to
    the checkpoint), then the HF stream's job killed whole and run again: bit for bit."""
    ids = tmp_path / "ids"
    ids.mkdir()
    # 48 optimizer steps an epoch (shares of 47 and 48 batches: a shadow round at each epoch's end);
    # the kill lands in epoch 2 of 3, far from the end
    common = [*STREAM, f"data.collate_args={{folder: {ids}}}", "checkpoint.every_steps=3", "data.args.train_size=1505",
              "epochs=3"]
    for factory in ("load", "load_hf"):
        stream = [*common, f"data.factory=tests.helpers.streams:{factory}"]
        reference = tmp_path / f"{factory}-reference"
        done = cpu2(*stream, f"output_dir={reference}")
        assert done.returncode == 0, done.stdout
        out = tmp_path / factory
        proc = start_process([str(CPU2), *stream, f"output_dir={out}"], env())
        target = 60  # epoch 2 has steps 49-96
        wait_for(lambda: latest_step(out) >= target and len(rank_processes(proc.pid, "main.py")) == 2, proc,
                 f"step {target}")
        if factory == "load":  # one rank: the supervisor restarts
            os.kill(rank_processes(proc.pid, "main.py")[1], signal.SIGKILL)
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0 and "restarting from step-" in flat(log), log
        else:  # the whole job, then the same command again
            from conftest import kill_group

            kill_group(proc)
            done = cpu2(*stream, f"output_dir={out}")
            assert done.returncode == 0 and "resuming from" in done.stdout, done.stdout
        assert_same_run(out, reference, epochs=3, context=factory)


def test_a_stream_that_cannot_be_read_again_alike_says_so(tmp_path):
    common = [*STREAM, "data.collate=pad", "checkpoint.every_steps=3", "epochs=1"]
    declared = tmp_path / "declared"  # replayable = False: said in the plan, checkpoints at epoch ends only
    done = cpu2(*common, "data.args.replayable=false", f"output_dir={declared}")
    assert done.returncode == 0, done.stdout
    assert "cannot be read again alike (replayable = False): checkpoints at epoch ends only" in flat(done.stdout)
    assert sorted(p.name for p in (declared / "checkpoints").glob("step-*")) == ["step-00000017"]

    fresh = tmp_path / "fresh"  # a new order at every read: a mid-epoch resume finds other samples
    longer = [*common, "data.args.fresh_order=true", "data.args.train_size=3001"]  # 94 steps: stopped far from the end
    proc = start_process([str(CPU2), *longer, f"output_dir={fresh}"], env())
    wait_for(lambda: latest_step(fresh) >= 6, proc, "step 6")
    os.killpg(proc.pid, signal.SIGTERM)  # preempted: a mid-epoch checkpoint, exit 75
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, log
    again = cpu2(*longer, f"output_dir={fresh}")
    assert again.returncode == 2, again.stdout
    assert "error: stream CountingStream gave other samples when read again to resume mid-epoch" in again.stdout


def test_streams_through_the_class_front_on_two_processes(tmp_path):
    from tests.helpers.lm import token_loss

    script = ROOT / "tests" / "helpers" / "lm_class_front.py"
    for factory in ("load", "load_hf"):
        out = tmp_path / factory
        done = cpu2(script, factory, out)
        assert done.returncode == 0, done.stdout
        seen = seen_ids(out)
        checked = collections.Counter(first_two(factory, 301, 51))  # the check before training, per process
        assert [seen[i] - checked[i] for i in range(301)] == [2] * 301 and len(seen) == 301  # each once an epoch
        result = json.loads((out / "evaluate.json").read_text())
        assert result["val_loss"] == pytest.approx(token_loss(model_from(out), validation_samples(51, 0)), abs=1e-6)
        assert result["val_loss"] == pytest.approx(last_row(out)["val_loss"], abs=1e-12)


# ------------------------------------------------------------------------------------------ LoRA
def lora_args(pretrained: Path, out: Path, *extra) -> list[str]:
    return [*LM, "model=examples.lm.model:GPT2ForCausalLM", f"pretrained={pretrained}", "epochs=2",
            "peft.method=lora", "peft.r=4", "peft.alpha=8", "peft.target_modules=[c_attn]", "peft.merged_export=true",
            "data.args={train_size: 512, val_size: 101, seed: 7}", "checkpoint.every_steps=5", "optimizer.lr=0.01",
            f"output_dir={out}", *extra]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A model trained here and saved with save_pretrained (the run's hf/): the base to fine-tune."""
    out = tmp_path_factory.mktemp("pretrained")
    done = subprocess.run([PYTHON, str(MAIN), *LM, "model=examples.lm.model:gpt2",
                           "model_args={vocab_size: 64, hidden: 32, layers: 2, heads: 2, positions: 64}",
                           f"output_dir={out}"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out / "hf"


def test_lora_on_a_pretrained_model_trains_only_the_adapters_exactly(tmp_path, pretrained):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from tests.helpers.lm import token_loss

    out = tmp_path / "lora"
    done = cpu2(*lora_args(pretrained, out))
    assert done.returncode == 0, done.stdout
    # only the main process prints, the libraries too: transformers' "Loading weights" bar (its
    # final state) at most once, no library line twice, and peft's FutureWarning to transformers gone
    pieces = [p for p in re.split(r"[\r\n]", done.stdout) if p.strip()]
    library = [p for p in pieces if "Loading weights" in p or "Warning" in p or "warn(" in p]
    assert len(library) == len(set(library)), library
    assert sum("Loading weights: 100%" in p for p in pieces) <= 1 and "FutureWarning" not in done.stdout, library
    base = load_file(str(pretrained / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    adapters = {k for k in final if "lora_" in k}

    def base_name(key):  # peft's name of a base weight
        return "base_model.model." + key.replace("attn.c_attn.", "attn.c_attn.base_layer.")

    assert adapters and set(final) - adapters == {base_name(k) for k in base}
    for key, value in base.items():  # the frozen base: bit for bit what was loaded
        assert torch.equal(final[base_name(key)], value), key
    for checkpoint in (out / "checkpoints").glob("step-*"):  # the adapters alone, not the base
        assert set(load_file(str(checkpoint / "model.safetensors"))) == adapters
        assert (checkpoint / "model.safetensors").stat().st_size < (pretrained / "model.safetensors").stat().st_size / 4

    # peft's own loader: the base class's from_pretrained plus the adapter folder, no project code
    model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(pretrained), out / "hf").eval()
    reference = token_loss(model, validation_samples(seed=7))
    assert last_row(out)["val_loss"] == pytest.approx(reference, abs=1e-6)  # two processes, exact
    merged = GPT2LMHeadModel.from_pretrained(out / "hf-merged")
    assert token_loss(merged, validation_samples(seed=7)) == pytest.approx(reference, abs=1e-5)

    import train

    loaded = train.load_model(out)  # the adapted model, rebuilt from the run's config
    assert isinstance(loaded, PeftModel)
    batch = torch.stack([s["input_ids"][:5] for s in validation_samples(seed=7)[:8]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=batch).logits, model(input_ids=batch).logits)

    killed = tmp_path / "killed"  # SIGKILL of the whole job mid-epoch 2, then the same command
    proc = start_process([str(CPU2), *lora_args(pretrained, killed)], env())
    wait_for(lambda: latest_step(killed) >= 20 and len(rank_processes(proc.pid, "main.py")) == 2, proc, "step 20")
    from conftest import kill_group

    kill_group(proc)
    again = cpu2(*lora_args(pretrained, killed))
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout
    assert_same_run(killed, out)


# ------------------------------------------------------------------------------------- the example
def test_the_lm_example_reaches_its_perplexity_on_two_processes(tmp_path):
    out = tmp_path / "lm"
    done = cpu2("--config", "examples/lm/config.yaml", "progress=false", f"output_dir={out}",
                f"data.args.tokenizer_dir={tmp_path / 'tokenizers'}", timeout=900)
    assert done.returncode == 0, done.stdout
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert history["val_perplexity"].iloc[-1] <= 6.0, history
    sys.path.insert(0, str(ROOT))
    from examples.lm.data import load
    from examples.lm.model import GPT2ForCausalLM

    from tests.helpers.lm import token_loss

    val = load(tokenizer_dir=str(tmp_path / "tokenizers"))["val"]
    model = GPT2ForCausalLM.from_pretrained(out / "hf")
    reference = token_loss(model, [val[i] for i in range(len(val))])
    assert history["val_loss"].iloc[-1] == pytest.approx(reference, abs=1e-6)

    # its predictions, row by row: each target token beside the model's guess for it (plain torch:
    # the output at position t guesses the token at t + 1)
    from train.fronts.predict import main as predict

    assert predict([str(out), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == len(val)
    for i in (0, len(val) - 1):
        ids = val[i]["input_ids"]
        with torch.no_grad():
            guesses = model(input_ids=ids[None]).logits[0, :-1].argmax(-1)
        assert rows[i]["target"] == " ".join(map(str, ids[1:].tolist())), i
        assert rows[i]["prediction"] == " ".join(map(str, guesses.tolist())), i
        assert rows[i]["length"] == str(len(ids) - 1)
