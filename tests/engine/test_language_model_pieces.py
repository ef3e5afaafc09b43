"""The pieces behind language models, in one process: which losses are token-level and how they are
counted and averaged, the supervisor's rule for a repeated failure, the checks and one-line errors
of streams, adapters, pretrained folders and gradient checkpointing, the class front's warnings,
and the rows `train.predict` writes for outputs per token. References are plain torch."""

import csv

import pytest
import torch

from conftest import ROOT


def test_which_losses_are_token_level_and_what_they_count():
    from transformers import BertConfig, BertForTokenClassification

    from examples.lm.model import GPT2ForCausalLM, gpt2
    from tests.helpers.hf_models import tiny_bert
    from tests.helpers.lm import tiny_gpt2
    from train.engine.targets import TokenCrossEntropy, loss_shifts_labels, target_counter

    from transformers import GPT2LMHeadModel

    causal = tiny_gpt2()
    assert loss_shifts_labels(causal) and loss_shifts_labels(gpt2(vocab_size=32, hidden=16))
    assert isinstance(gpt2(vocab_size=32, hidden=16), GPT2ForCausalLM)
    assert loss_shifts_labels(GPT2LMHeadModel(causal.config))  # no loss_type: transformers falls back to causal
    tokens = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32, num_labels=3))
    assert not loss_shifts_labels(tokens) and not loss_shifts_labels(tiny_bert())
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    assert target_counter(causal, None)(labels).item() == 3  # shifted: position 0 is never a target
    assert target_counter(tokens, None)(labels).item() == 5
    assert target_counter(tiny_bert(), None) is None  # a sequence classifier: one label per sample

    class Segmenter(torch.nn.Module):  # a model of your own with labels per pixel: sample-level when it says so
        token_level = False

    assert target_counter(Segmenter(), None) is None
    mine = target_counter(torch.nn.Linear(2, 2), None)  # a model of your own: token-level for (batch, length) labels
    assert mine(labels).item() == 5 and mine(torch.zeros(2, 3, 4, dtype=torch.long)) is None
    assert target_counter(causal, torch.nn.functional.cross_entropy) is None  # a plain loss: sample-level
    loss = TokenCrossEntropy(shift=True)
    assert target_counter(causal, loss)(labels).item() == 3
    logits = torch.randn(2, 4, 10)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 10), labels[:, 1:].reshape(-1))
    assert torch.allclose(loss(logits, labels), expected)


def test_epoch_sums_average_a_token_level_loss_over_its_targets():
    from train.engine.metrics import EpochSums, perplexity

    sums = EpochSums({"perplexity": perplexity}, "cpu")
    batches = [(torch.tensor(2.0), 30), (torch.tensor(1.0), 10), (torch.tensor(4.0), 0)]  # means, targets
    for mean, targets in batches:
        sums.add(mean, torch.zeros(3, 5), torch.zeros(3, 5, dtype=torch.long), weight=torch.tensor(targets))
    expected = (2.0 * 30 + 1.0 * 10) / 40  # summed token losses over their number, not a mean of means
    result = sums.result()
    assert result["loss"] == pytest.approx(expected) and result["perplexity"] == pytest.approx(torch.tensor(expected).exp().item())
    restored = EpochSums({"perplexity": perplexity}, "cpu")
    restored.load_state(sums.state())  # a mid-epoch checkpoint keeps the counts
    assert restored.result() == result


def test_a_failure_repeated_on_any_process_is_a_bug():
    from train.supervision.attempts import failures, repeated

    def attempt(rank, reason, batch=63):
        return [{"rank": rank, "pid": 10 + rank, "kind": "exception", "code": 1, "epoch": 1, "batch": batch,
                 "reason": reason},
                {"rank": 1 - rank, "pid": 11 - rank, "kind": "lost contact", "code": 1, "epoch": 1, "batch": batch,
                 "reason": "lost contact with another process"}]

    first = failures(attempt(0, "RuntimeError: sizes differ"), {}, 1)
    second = failures(attempt(1, "RuntimeError: sizes differ"), {}, 1)  # the other rank raised first this time
    assert repeated(second, first) == "rank 1 failed twice at epoch 1 batch 63 with RuntimeError: sizes differ"
    assert repeated(failures(attempt(0, "RuntimeError: sizes differ", batch=64), {}, 1), first) is None
    assert repeated(second, None) is None


def test_rows_for_outputs_per_token(tmp_path):
    from train.fronts.predict import write_rows

    outputs = [torch.eye(4)[[1, 2, 3]], torch.eye(4)[[3, 0]]]  # two samples of 3 and 2 tokens
    targets = [torch.tensor([1, 2, 3]), torch.tensor([-100, 0])]
    write_rows(tmp_path / "p.csv", outputs, targets)
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    # position by position, where there is a target
    assert rows == [["index", "length", "target", "prediction"], ["0", "3", "1 2 3", "1 2 3"], ["1", "1", "0", "0"]]
    # a causal language model's output at position t is its guess for the token at t + 1
    write_rows(tmp_path / "p.csv", [torch.eye(4)[[2, 3, 0]]], [torch.tensor([1, 2, 3])], shifted=True)
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows == [["index", "length", "target", "prediction"], ["0", "2", "2 3", "2 3"]]


def run_main(*args) -> int:
    from train.fronts.script import main

    return main(list(map(str, args)))


LM = ["--config", ROOT / "tests" / "helpers" / "lm.yaml", "data.args={train_size: 64, val_size: 16}"]


@pytest.mark.parametrize("overrides, expected", [
    (["data.factory=tests.helpers.streams:load", "data.group_by_length=true"],
     "error: data.group_by_length needs every sample's length, and a stream has no length"),
    (["data.factory=tests.helpers.streams:load", "scheduler.name=cosine", "scheduler.interval=step"],
     "error: scheduler.name=cosine stepped per optimizer step needs the steps of a run, but the training stream has "
     "no length; set steps_per_epoch"),
    (["peft.method=lora", "peft.target_modules=[nothing_here]"],
     "error: cannot add lora adapters to model 'tests.helpers.lm:tiny_gpt2'"),
    (["model=transformers:GPT2LMHeadModel", "pretrained=/nowhere"],
     "error: pretrained '/nowhere' is not a folder written by save_pretrained (no such folder)"),
    (["pretrained=runs"], "error: pretrained is set but model 'tests.helpers.lm:tiny_gpt2' has no from_pretrained"),
    (["model=tests.helpers.sequences:MeanPool", "loss=cross_entropy", "data.factory=tests.helpers.sequences:load",
      "data.args={train_size: 64, val_size: 16}", "gradient_checkpointing=true"],
     "error: gradient_checkpointing is true but model 'tests.helpers.sequences:MeanPool' does not support it"),
    (["model=tests.helpers.sequences:MeanPool", "model_args={classes: 3}", "loss=cross_entropy",
      "data.factory=tests.helpers.sequences:load", "data.args={train_size: 64, val_size: 16}", "data.num_classes=4"],
     "error: model tests.helpers.sequences:MeanPool outputs 3 classes but data.num_classes=4"),
])
def test_language_model_mistakes_are_one_line(tmp_path, capsys, overrides, expected):
    assert run_main(*LM, *overrides, f"output_dir={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not (tmp_path / "out").exists()


def test_your_own_classes_come_from_the_model_not_mnist(tmp_path):
    """A 3-class model of your own on your own data: no data.num_classes to write (it was refused
    against MNIST's 10)."""
    out = tmp_path / "out"
    assert run_main(*LM, "model=tests.helpers.sequences:MeanPool", "model_args={classes: 3}", "loss=cross_entropy",
                    "metrics=[accuracy]", "data.factory=tests.helpers.sequences:load",
                    "data.args={train_size: 64, val_size: 16}", f"output_dir={out}") == 0
    assert (out / "model.safetensors").is_file()


def test_gradient_checkpointing_trains_the_same_steps(tmp_path):
    import pandas as pd

    runs = {}
    for on in (False, True):
        out = tmp_path / str(on)
        assert run_main(*LM, f"gradient_checkpointing={str(on).lower()}", "checkpoint.enabled=false",
                        f"output_dir={out}") == 0
        runs[on] = pd.read_csv(out / "history.csv")
    assert runs[True]["loss"].tolist() == pytest.approx(runs[False]["loss"].tolist(), rel=1e-5)
    assert runs[True]["val_loss"].tolist() == pytest.approx(runs[False]["val_loss"].tolist(), rel=1e-5)


def test_labels_at_padding_positions_get_one_warning(capsys):
    import train
    from tests.helpers.lm import tiny_gpt2

    class PaddedByHand(torch.utils.data.Dataset):  # fixed length 8, padded with token 0 in the labels too
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.tensor([3, 4, 5, 6, 0, 0, 0, 0])
            return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids}

    model = train.Model(tiny_gpt2())
    model.compile(loss_func=None, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    model.fit(1, torch.utils.data.DataLoader(PaddedByHand(), batch_size=4))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 8 label(s) of the first batch sit at padding positions (attention_mask 0) with real "
                        "ids, so the loss trains on padding; give them -100 there (data.collate: pad does)"]


def test_a_batch_without_targets_adds_nothing():
    """A sample whose labels are all -100 (a prompt, cut by truncation) alone in a batch: its mean is
    0 / 0; it adds nothing to the loss nor to the gradients, and the run does not stop on a NaN."""
    import train
    from tests.helpers.lm import Counting, tiny_gpt2, token_loss

    data = Counting(6, seed=3)
    samples = [data[i] for i in range(6)]
    samples[2] = {**samples[2], "labels": torch.full_like(samples[2]["labels"], -100)}
    train.seed_everything(0)
    model = train.Model(tiny_gpt2())
    model.compile(loss_func=None, optimizer=torch.optim.SGD(model.parameters(), lr=0.0))  # the weights stay
    from train.data.batches import PadCollate

    history = model.fit(1, torch.utils.data.DataLoader(samples, batch_size=1, collate_fn=PadCollate()), progress=False)
    kept = [s for i, s in enumerate(samples) if i != 2]
    assert history["loss"].iloc[-1] == pytest.approx(token_loss(model.net, kept), abs=1e-6)


def test_predictions_of_one_shape_stay_one_tensor():
    import train

    class Images(torch.nn.Module):  # an output of four dimensions, the same for every batch
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return x[:, :1] * self.scale

    model = train.Model(Images())
    model.compile(loss_func=torch.nn.functional.mse_loss)
    x = torch.randn(10, 3, 4, 4)
    out = model.predict(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1]), batch_size=4))
    assert torch.is_tensor(out) and torch.equal(out, x[:, :1] * 2)
