"""Bad input gets one clear line, its exit code, no traceback and no half-written output.

Each case runs the script front's `main` as a user would (argv in, exit code out) and checks
that stderr is exactly one `error: ...` line naming the problem, and that `output_dir` holds no
file afterwards.
"""

import shutil

import pytest

from conftest import MNIST, ROOT, launch_two, need_module
from train.fronts.script import main

SMOKE = ["data.train_size=256", "data.val_size=128", f"data.path={MNIST}", "progress=false"]


def files_in(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture(scope="module")
def other_shape_checkpoint(tmp_path_factory):
    """A checkpoint of the tutorial CNN with 12 classes instead of 10 (a different last layer)."""
    out = tmp_path_factory.mktemp("twelve")
    assert main([*SMOKE, "epochs=1", "data.num_classes=12", f"output_dir={out}"]) == 0
    return out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()


def corrupt_copy(folder, keep=None):
    folder.mkdir()
    for f in MNIST.glob("*.gz"):
        shutil.copy(f, folder)
    images = folder / "train-images-idx3-ubyte.gz"
    size = int(images.stat().st_size * keep) if keep else 5000
    images.write_bytes(images.read_bytes()[:size])  # cut short, as an interrupted download would be
    return folder


CASES = {
    "unknown key": (["optimizer.lrr=0.1"], "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    "wrong type": (["epochs=three"], "config key 'epochs' expects int, got str 'three'"),
    "YAML syntax": (["--config", "{bad_yaml}"], "YAML syntax error at line 4: expected ',' or ']', but got ':' (while parsing a flow sequence at line 3)"),
    "missing config": (["--config", "{tmp}/nowhere.yaml"], "nowhere.yaml' not found; pass an existing file"),
    "a folder as config": (["--config", "{tmp}"], "is a folder; pass a YAML file with --config"),
    "missing data": (["data.path={tmp}"], "train-images-idx3-ubyte.gz' not found"),
    "corrupt data": (["data.path={corrupt}"], "train-images-idx3-ubyte.gz' is truncated (its compressed stream"),
    "half an images file": (["data.path={half}"], "train-images-idx3-ubyte.gz' is truncated or padded: its header"),
    "labels out of range": (["data.num_classes=5"], "labels range over 0..9 but data.num_classes=5"),
    "batch size 0": (["batch_size=0"], "config key 'batch_size' must be > 0, got 0"),
    "negative epochs": (["epochs=-1"], "config key 'epochs' must be >= 0, got -1"),
    "no training data": (["data.train_size=0"], "config key 'data.train_size' must be > 0 or null (all)"),
    "unknown optimizer": (["optimizer.name=adamm"], "unknown optimizer 'adamm' (did you mean 'adam'?); choose one"),
    "unknown loss": (["loss=mae"], "unknown loss 'mae' (did you mean 'mse'?); choose one of cross_entropy, nll, mse"),
    "unknown scheduler": (["scheduler.name=linear"], "unknown scheduler 'linear'; choose one of none, step, cosine"),
    "regression loss on class labels": (["loss=mse"], "the loss cannot take model tutorial_cnn's output (10,) with the "
                                                      "labels (): UserWarning: Using a target size"),
    "fp16 on a CPU": (["mixed_precision=fp16"], "mixed_precision=fp16 needs a GPU; on a CPU use"),
    "resume from nothing": (["resume={tmp}/no-such-checkpoint"], "no-such-checkpoint': no such checkpoint"),
    "resume another model": (["resume={other}"], "is of a different model (layers.9.bias: [12] saved, [10] now)"),
    "output_dir not writable": (["output_dir={tmp}/a-file/out"], "is not writable (Not a directory)"),
    "val monitor without validation": (["early_stopping.monitor=val_loss", "data.val_size=0"],
                                       "'early_stopping.monitor' is 'val_loss' but there is no validation data"),
    "monitor not a column": (["checkpoint.monitor=val_acc"], "not a history column; did you mean 'val_accuracy'?"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_leaves_nothing(case, tmp_path, capsys, request):
    args, expected = CASES[case]
    (tmp_path / "bad.yaml").write_text("epochs: 2\ndata:\n  path: [unclosed\nseed: 1\n")
    (tmp_path / "a-file").write_text("")
    places = dict(tmp=tmp_path, bad_yaml=tmp_path / "bad.yaml",
                  corrupt=corrupt_copy(tmp_path / "corrupt") if case == "corrupt data" else "",
                  half=corrupt_copy(tmp_path / "half", keep=0.5) if case == "half an images file" else "",
                  other=request.getfixturevalue("other_shape_checkpoint") if case == "resume another model" else "")
    out = tmp_path / "out"
    argv = [a.format(**places) for a in [*SMOKE, f"output_dir={out}", *args]]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert not files_in(out), f"left behind: {files_in(out)}"


@pytest.mark.parametrize("args,flag,hint", [(["--epochs", "2"], "--epochs", "epochs=2"),
                                            (["--batch-size=64"], "--batch-size=64", "batch_size=64"),
                                            (["epochs=1", "--lr", "0.1"], "--lr", "optimizer.lr=0.1")])
def test_a_setting_given_as_a_flag_gets_one_line_with_its_key_value_form(args, flag, hint, tmp_path, capsys):
    with pytest.raises(SystemExit) as ended:
        main([*SMOKE, f"output_dir={tmp_path / 'out'}", *args])
    err = capsys.readouterr().err
    assert ended.value.code == 2
    assert err.strip().splitlines() == [f"error: {flag} is not an option of train/main.py: settings are key=value, "
                                        f"e.g. {hint} (python train/main.py --help lists the keys)"], err
    assert not files_in(tmp_path / "out")


LM_BASE = ROOT / "examples" / "lm" / "config.yaml"
PRETRAINED = {
    "the base run not trained yet": ([], "pretrained 'runs/lm/hf' does not exist yet: it is the hf/ folder a run "
                                         f"writes when it finishes; train that run first: launch/one.sh --config {LM_BASE}"),
    "its run folder named": (["pretrained=runs/lm"], "pretrained 'runs/lm' does not exist yet: it is a run's output "
                             f"folder, whose model will be in runs/lm/hf; train that run first (launch/one.sh --config "
                             f"{LM_BASE}), then set pretrained=runs/lm/hf"),
    "the base run unfinished": ([], "pretrained 'runs/lm/hf': the run in runs/lm has not finished (its hf/ is written "
                                    "at the end); run its command again to finish it, then this one"),
    "a finished run's folder": (["pretrained=runs/lm"], "pretrained 'runs/lm' is a run's folder; its model is in "
                                                        "runs/lm/hf: set pretrained=runs/lm/hf"),
    "a LoRA run's adapters": (["pretrained=runs/lm-lora/hf"], "pretrained 'runs/lm-lora/hf' holds LoRA adapters, not "
                              "a whole model; its adapters merged into the weights are in runs/lm-lora/hf-merged: "
                              "pretrained=runs/lm-lora/hf-merged"),
}


@pytest.mark.parametrize("case", list(PRETRAINED))
def test_the_lora_step_before_its_base_names_the_command_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    need_module("transformers")
    overrides, expected = PRETRAINED[case]
    monkeypatch.chdir(tmp_path)  # a fresh checkout's working folder: no runs/ yet
    if case == "the base run unfinished":
        (tmp_path / "runs" / "lm").mkdir(parents=True)
        (tmp_path / "runs" / "lm" / "config.yaml").write_text("epochs: 5\n")
    elif case == "a LoRA run's adapters":
        for folder, name in (("hf", "adapter_config.json"), ("hf-merged", "config.json")):
            (tmp_path / "runs" / "lm-lora" / folder).mkdir(parents=True)
            (tmp_path / "runs" / "lm-lora" / folder / name).write_text("{}")
    elif case == "a finished run's folder":
        (tmp_path / "runs" / "lm" / "hf").mkdir(parents=True)
        (tmp_path / "runs" / "lm" / "hf" / "config.json").write_text("{}")
    before = set(files_in(tmp_path))
    code = main(["--config", str(ROOT / "examples" / "lm" / "lora.yaml"), *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [f"error: {expected}"], err
    assert set(files_in(tmp_path)) == before  # neither the tokenizer nor the run's folder was written


def test_debug_shows_the_traceback(tmp_path):
    from train.base.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown config key"):
        main(["--debug", "optimizer.lrr=0.1", f"output_dir={tmp_path}"])


@pytest.mark.slow
def test_validation_set_smaller_than_the_processes(tmp_path):
    out = tmp_path / "out"
    done = launch_two(ROOT / "train" / "main.py", *SMOKE, "data.val_size=1", f"output_dir={out}")
    assert done.returncode == 1  # plain `accelerate launch` turns a script's 2 into 1 (the wrappers keep the 2)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert ours == ["error: the validation set has 1 sample(s), fewer than the 2 processes; give data.val_size >= 2, "
                    "or data.val_size=0 for no validation"], done.stderr  # said once, by rank 0
    assert "Traceback" not in done.stderr.split("error: ")[0]
    assert not files_in(out)
