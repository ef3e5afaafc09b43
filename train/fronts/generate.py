"""Text from a trained language model: `python -m train.generate RUN_DIR "prompt" ... [--tokenizer T]`.

Rebuilds the run's model (`train.load_model`: its config and final weights, or `--checkpoint`; a
LoRA run's adapted model too) and continues each prompt with the model's own `generate`
(transformers' generation: greedy by default, sampling with `--temperature` and `--top-k`), then
prints one continuation per prompt. The tokenizer is the one `--tokenizer` names: a tokenizer file
(`tokenizers`' JSON), a folder a transformers tokenizer was saved in, or an import path to a
function that returns one (`examples.lm.data:tokenizer`, called in the run's working folder);
without it, the run's `hf/` folder if a tokenizer was saved there. On the CPU; one process.
Exit 2 with one line for a bad folder, prompt, tokenizer or a model that cannot generate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.base.errors import ConfigError, RunError
from train.supervision.reports import ended_by


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m train.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the output folder of a config run of a language model")
    parser.add_argument("prompts", nargs="+", help="the text(s) to continue")
    parser.add_argument("--tokenizer", help="a tokenizer file or folder, or package.module:function returning one")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default), else sampling")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    parser.add_argument("--seed", type=int, default=0, help="the sampling's seed")
    parser.add_argument("--checkpoint", help="best, latest or step-NNNNNNNN instead of the final weights")
    return parser.parse_args(argv)


def load_tokenizer(spec, run_dir: Path, cwd=None, data_args=None):
    """The tokenizer `spec` names (see the module docstring), or the one saved in the run's hf/. A
    function is called with those of the run's `data.args` it takes (the vocabulary size and the
    tokenizer's folder the run's data factory used, say)."""
    from train.fronts.reload import working_folder

    if spec is None:
        saved = run_dir / "hf"
        if (saved / "tokenizer_config.json").is_file() or (saved / "tokenizer.json").is_file():
            spec = str(saved)
        else:
            raise ConfigError(f"no tokenizer saved in {saved}; name one with --tokenizer (a tokenizer file, a folder "
                              f"with a saved transformers tokenizer, or package.module:function returning one)")
    path = Path(spec)
    if path.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    if path.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    from train.config.names import is_import_path, resolve

    if not is_import_path(spec):
        raise ConfigError(f"--tokenizer '{spec}' is neither a file, a folder nor package.module:function")
    with working_folder(cwd):
        made = resolve(spec, {}, "tokenizer")
        if hasattr(made, "encode") or not callable(made):
            return made
        import inspect

        takes = inspect.signature(made).parameters
        try:
            return made(**{k: v for k, v in (data_args or {}).items() if k in takes})
        except Exception as e:  # a tokenizer file that is not there, say: the user's to fix
            from train.base.errors import describe

            raise ConfigError(f"--tokenizer {spec} raised {describe(e)}") from None


def generate(run_dir, prompts, tokenizer=None, max_new_tokens=40, temperature=0.0, top_k=None, seed=0,
             checkpoint=None) -> list[str]:
    """Each prompt continued by the run's model: the continuations (text after the prompt)."""
    import torch

    from train.fronts.reload import load_model, run_config

    run_dir = Path(run_dir).resolve()
    cfg, origin = run_config(run_dir)
    if not prompts or any(not p.strip() for p in prompts):
        raise ConfigError("give each prompt some text (an empty prompt gives no tokens)")
    from train.saving.export import quiet_transformers

    if cfg.pretrained or cfg.peft.method != "none" or ":" in cfg.model:
        with quiet_transformers():  # no "Loading weights" bar before the text
            model = load_model(run_dir, checkpoint)
    else:
        model = load_model(run_dir, checkpoint)  # a built-in net: transformers may not be installed
    can = getattr(model, "can_generate", None)
    if not hasattr(model, "generate") or (callable(can) and not can()):
        raise ConfigError(f"the model of {run_dir} cannot generate text: a transformers causal language model "
                          f"(or a peft model of one) can")
    tok = load_tokenizer(tokenizer, run_dir, origin.get("cwd"), dict(cfg.data.args))
    config = getattr(model, "config", None)
    eos, pad = getattr(config, "eos_token_id", None), getattr(config, "pad_token_id", None)
    torch.manual_seed(seed)
    out = []
    for prompt in prompts:
        encoded = tok.encode(prompt)
        ids = list(getattr(encoded, "ids", encoded))  # tokenizers' Encoding, or transformers' list of ids
        if eos is not None and len(ids) > 1 and ids[-1] == eos:  # a tokenizer that closes every text: keep it open
            ids = ids[:-1]
        if not ids:
            raise ConfigError(f"the prompt {prompt!r} gives no tokens; give some text")
        sampling = temperature > 0
        longest = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if longest and len(ids) + max_new_tokens > longest:
            raise ConfigError(f"the prompt {prompt!r} ({len(ids)} tokens) and --max-new-tokens {max_new_tokens} "
                              f"exceed the model's {longest} positions; give fewer new tokens")
        try:
            with torch.no_grad():
                made = model.generate(input_ids=torch.tensor([ids]),
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=max_new_tokens, do_sample=sampling,
                                      **({"temperature": temperature, "top_k": top_k} if sampling else {}),
                                      pad_token_id=pad if pad is not None else eos)
        except (TypeError, ValueError) as e:  # a setting generate refuses (a temperature, top_k)
            from train.base.errors import describe

            raise ConfigError(f"generate refused the settings: {describe(e)}") from None
        out.append(tok.decode(made[0, len(ids):].tolist(), skip_special_tokens=True))
    return out


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        continuations = generate(args.run_dir, args.prompts, args.tokenizer, args.max_new_tokens, args.temperature,
                                 args.top_k, args.seed, args.checkpoint)
    except RunError as e:
        return ended_by(e)
    for prompt, text in zip(args.prompts, continuations):
        print(prompt + (text if text[:1].isspace() else f" {text}"), flush=True)
    return 0
