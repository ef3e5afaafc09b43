"""Real models and data: variable-length samples through a collate (padded, length-grouped), a
`transformers` model with its own loss or a loss on its logits, dict samples holding `labels`,
and the mistakes such data and models bring, each one line and exit 2 before anything is written,
in the script and in the class front."""

import pytest
import torch
from torch.utils.data import DataLoader

import train
from train.fronts.script import main

from helpers.sequences import MeanPool, Sequences

SEQ = ["model=tests.helpers.sequences:MeanPool", "data.source=python", "data.factory=tests.helpers.sequences:load",
       "data.args={train_size: 256, val_size: 64}", "data.num_classes=2", "epochs=1", "batch_size=32",
       "progress=false"]


def files_in(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def one_error_line(capsys, code, expected):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    fragments = expected if isinstance(expected, tuple) else (expected,)
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(f in lines[0] for f in fragments), err


SHAPES = ("training samples have different shapes ((9,) and (", ",)); set data.collate: pad or give a collate function")

SCRIPT_CASES = {
    "different lengths, no collate": ([], SHAPES),
    "the same in preflight": (["preflight=true"], SHAPES),
    "the same in a smoke run (a Subset)": (["data.train_size=100"], SHAPES),
    "2 outputs, 3 classes": (["data.collate=pad", "data.num_classes=3"],
                             "outputs 2 classes but data.num_classes=3; make them agree"),
    "5 outputs, 2 classes": (["data.collate=pad", "model_args.classes=5"],
                             "outputs 5 classes but data.num_classes=2; make them agree"),
    "float labels, cross_entropy": (["data.collate=pad", "data.factory=tests.helpers.sequences:load_float_labels",
                                     "data.args={}"],
                                    "the targets are floating point but the loss expects class indices"),
    "an output no loss takes": (["data.collate=pad", "model=tests.helpers.sequences:ReturnsASet"],
                                "returned a set; return a tensor, a tuple (first = predictions) or a dict"),
    "a collate that fails": (["data.collate=tests.helpers.bad_things:broken_metric"],
                                  "the collate function cannot batch the training samples"),
}


@pytest.mark.parametrize("case", list(SCRIPT_CASES))
def test_data_and_model_mistakes_in_the_script_are_one_line_and_write_nothing(case, tmp_path, capsys):
    args, expected = SCRIPT_CASES[case]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main([*SEQ, f"output_dir={out}", *args])
    one_error_line(capsys, code, expected)
    assert files_in(out) == [] and not (tmp_path / ".out.preflight").exists()


def class_front(net, dataset, loss=torch.nn.functional.cross_entropy, **fit):
    model = train.Model(net)
    model.compile(loss_func=loss, optimizer=torch.optim.Adam(model.parameters()),
                  metrics_dict={"accuracy": train.metrics.accuracy})
    return model.fit(1, DataLoader(dataset, batch_size=16), progress=False, **fit)


CLASS_CASES = {
    "different lengths, no collate": (MeanPool(), Sequences(64, 0), {}, SHAPES),
    "2 outputs, 3 classes": (MeanPool(), Sequences(64, 0), {"num_classes": 3},
                             "outputs 2 classes but data.num_classes=3"),
    "5 outputs, 2 classes": (MeanPool(classes=5), Sequences(64, 0), {"num_classes": 2},
                             "outputs 5 classes but data.num_classes=2"),
    "labels beyond the outputs": (MeanPool(classes=1), Sequences(64, 0), {}, "the labels reach 1 but model MeanPool "
                                                                             "outputs 1 classes"),
    "an output no loss takes": (__import__("helpers.sequences").sequences.ReturnsASet(), Sequences(64, 0), {},
                                "model ReturnsASet returned a set"),
}


@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_the_class_front_with_an_output_folder_ends_with_one_line_and_exit_2(case, tmp_path, capsys):
    net, dataset, options, expected = CLASS_CASES[case]
    if case != "different lengths, no collate":
        dataset = torch.utils.data.Subset(dataset, range(64))
    collate = None if case == "different lengths, no collate" else train.batches.PadCollate()
    loader_kwargs = {"collate_fn": collate} if collate else {}
    model = train.Model(net)
    model.compile(loss_func=torch.nn.functional.cross_entropy, optimizer=torch.optim.Adam(model.parameters()))
    dl = DataLoader(dataset, batch_size=16, **loader_kwargs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        model.fit(1, dl, output_dir=str(tmp_path / "out"), progress=False, **options)
    one_error_line(capsys, ended.value.code, expected)
    assert files_in(tmp_path / "out") == []
    with pytest.raises(train.UserError, match="different shapes|classes|returned a set|labels reach"):
        model.fit(1, dl, progress=False, **options)  # no output folder (a notebook): the exception itself


def test_float_labels_with_cross_entropy_in_the_class_front(tmp_path, capsys):
    x = torch.randn(32, 4)
    dl = DataLoader(torch.utils.data.TensorDataset(x, torch.rand(32)), batch_size=8)
    model = train.Model(torch.nn.Linear(4, 3))
    model.compile(loss_func=torch.nn.CrossEntropyLoss())
    with pytest.raises(SystemExit) as ended:
        model.fit(1, dl, output_dir=str(tmp_path / "out"), progress=False)
    one_error_line(capsys, ended.value.code, "the targets are floating point but the loss expects class indices")


def test_pad_collate_pads_each_tensor_and_adds_the_attention_mask():
    from train.data.batches import pad_collate

    batch = pad_collate([{"input_ids": torch.tensor([5, 6, 7]), "labels": 1},
                         {"input_ids": torch.tensor([8]), "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    tokens, labels = pad_collate([(torch.tensor([1, 2]), torch.tensor([3, 4])), (torch.tensor([5]), torch.tensor([6]))],
                                 pad_value=-1)
    assert tokens.tolist() == [[1, 2], [5, -1]] and labels.tolist() == [[3, 4], [6, -100]]  # labels: ignored index
    typed = pad_collate([{"input_ids": torch.tensor([5, 6]), "token_type_ids": torch.tensor([0, 0]), "labels": 1},
                         {"input_ids": torch.tensor([7]), "token_type_ids": torch.tensor([0]), "labels": 0}], pad_value=1)
    assert typed["input_ids"].tolist() == [[5, 6], [7, 1]] and typed["token_type_ids"].tolist() == [[0, 0], [0, 0]]
    pair = pad_collate([((torch.ones(2, 3), torch.ones(1)), 0), ((torch.ones(4, 3), torch.ones(1)), 1)])
    assert pair[0][0].shape == (2, 4, 3) and pair[0][1].shape == (2, 1) and pair[1].tolist() == [0, 1]


def test_length_grouped_batches_pad_less_and_depend_on_seed_and_epoch_only():
    from train.data.grouping import LengthGroupedSampler, padding_efficiency

    lengths = Sequences(2000, 0).lengths
    sampler = LengthGroupedSampler(lengths, 32, seed=3)
    first = sampler.order(0)
    assert sorted(first) == list(range(2000))  # every sample once
    assert first == LengthGroupedSampler(lengths, 32, seed=3).order(0) and first != sampler.order(1)
    sampler.set_epoch(1)
    assert list(sampler) == sampler.order(1)
    shuffled = torch.randperm(2000, generator=torch.Generator().manual_seed(3)).tolist()
    grouped, plain = padding_efficiency(lengths, first, 32), padding_efficiency(lengths, shuffled, 32)
    assert plain < 0.7 < 0.9 < grouped


def test_model_outputs_as_libraries_return_them():
    from transformers.modeling_outputs import SequenceClassifierOutput

    from train.data.batches import model_output, split_batch

    logits, loss = torch.randn(4, 3), torch.tensor(0.5)
    assert model_output(logits) == (logits, None)
    assert model_output((logits, torch.zeros(1)))[0] is logits
    assert model_output({"logits": logits, "loss": loss}) == (logits, loss)
    preds, own = model_output(SequenceClassifierOutput(loss=loss, logits=logits))
    assert preds is logits and own is loss
    with pytest.raises(train.UserError, match="returned a str"):
        model_output("logits")
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.tensor([0, 1])}
    inputs, targets = split_batch(batch)
    assert list(inputs) == ["input_ids"] and targets.tolist() == [0, 1]
    inputs, _ = split_batch(batch, model_loss=True)
    assert list(inputs) == ["input_ids", "labels"]  # the model computes its loss from them
    assert split_batch({"x": 1, "label": 2}) == ({"x": 1}, 2)
