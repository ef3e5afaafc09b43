"""`python -m train.generate`: a trained language model's continuations, held to a greedy decoding
written here with plain transformers (the saved hf/ folder, argmax token by token)."""

import pytest
import torch

from conftest import ROOT, need_module

LM = ROOT / "examples" / "lm" / "config.yaml"


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    need_module("tokenizers")
    from train.fronts.script import main

    folder = tmp_path_factory.mktemp("lm")
    code = main(["--config", str(LM), "epochs=1", "data.args.train_size=300", "data.args.val_size=20",
                 "model_args.positions=64", f"data.args.tokenizer_dir={folder / 'tokenizers'}",
                 f"output_dir={folder / 'run'}", "progress=false", "checkpoint.enabled=false"])
    assert code == 0
    return folder


def test_generate_continues_each_prompt_as_a_plain_greedy_decoding_does(lm_run, capsys):
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    from train.fronts.generate import main

    prompts = ["the old dog", "once"]
    assert main([str(lm_run / "run"), *prompts, "--max-new-tokens", "6", "--tokenizer",
                 "examples.lm.data:tokenizer"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()

    tokenizer = Tokenizer.from_file(str(next((lm_run / "tokenizers").glob("bpe-512-*.json"))))
    model = GPT2LMHeadModel.from_pretrained(lm_run / "run" / "hf").eval()
    expected = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt).ids[:-1]  # [BOS] prompt, without the [EOS] the tokenizer closes it with
        start = len(ids)
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
                if ids[-1] == model.config.eos_token_id:
                    break
        text = tokenizer.decode(ids[start:], skip_special_tokens=True)
        expected.append(prompt + (text if text[:1].isspace() else f" {text}"))
    assert printed == expected
    assert all(len(line) > len(prompt) for line, prompt in zip(printed, prompts))  # something was generated


def test_generate_without_a_tokenizer_or_from_a_folder_that_is_no_run_is_one_line(lm_run, tmp_path, capsys):
    from train.fronts.generate import main

    assert main([str(lm_run / "run"), "the dog"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no tokenizer saved in {lm_run / 'run' / 'hf'}; name one with --tokenizer (a tokenizer file, a folder "
        f"with a saved transformers tokenizer, or package.module:function returning one)"]
    assert main([str(tmp_path), "the dog", "--tokenizer", "examples.lm.data:tokenizer"]) == 2
    assert "has no config.yaml: it is not the folder of a config run" in capsys.readouterr().err
