"""Text for a causal language model that the example makes itself (no download), tokenised by a
byte-level BPE tokenizer trained on it with Hugging Face `tokenizers`.

Two tasks over one small vocabulary:
- `stories`: 1-3 sentences of a small grammar ("the old fox chases a small bird near the river .");
- `mirror`: a sentence, then its words backwards ("the old fox chases a bird . bird a chases fox
  old the ."): the fine-tuning task (`examples/lm/lora.yaml`), learnt on top of the first with the
  same words (a model trained on stories alone has never seen a sentence backwards).

Samples are dicts `{"input_ids", "labels"}` of a few dozen tokens (`[BOS] ... [EOS]`; the plan
gives the range), the labels equal to the inputs: the model shifts them (each position predicts
the next token). The sets expose `lengths` for length-grouped batches."""

from __future__ import annotations

import random

import torch

from examples.text.data import shared_tokenizer

NOUNS = "cat dog bird fox child farmer teacher king queen horse wolf baker".split()
ADJECTIVES = "small big old young quick lazy happy sad brave clever".split()
VERBS = "sees likes chases finds helps follows calls watches".split()
PLACES = "garden river forest house market hill road field".split()
PREPOSITIONS = "near in behind across".split()
PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"  # ids 0, 1, 2, 3


def _phrase(rng: random.Random) -> list[str]:
    words = [rng.choice(["the", "a"])]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    return words + [rng.choice(NOUNS)]


def _sentence(rng: random.Random) -> list[str]:
    words = _phrase(rng) + [rng.choice(VERBS)] + _phrase(rng)
    if rng.random() < 0.5:
        words += [rng.choice(PREPOSITIONS), "the", rng.choice(PLACES)]
    return words


def story(rng: random.Random) -> str:
    return " ".join(" ".join(_sentence(rng)) + " ." for _ in range(rng.randint(1, 3)))


def mirror(rng: random.Random) -> str:
    words = _sentence(rng)
    return " ".join([*words, ".", *reversed(words), "."])


TASKS = {"stories": story, "mirror": mirror}


def make_texts(task: str, n: int, seed: int) -> list[str]:
    rng = random.Random(f"{task}-{seed}")
    return [TASKS[task](rng) for _ in range(n)]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`; each text is encoded as `[BOS] ... [EOS]`, and
    `[PAD]` is id 0 (the padding collate's default value)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tokenizer.token_to_id(BOS)), (EOS, tokenizer.token_to_id(EOS))])
    return tokenizer


def tokenizer_for(vocab_size: int, folder: str):
    """The one tokenizer of both tasks: trained on a fixed sample of each, whatever a run loads."""
    texts = make_texts("stories", 2000, 12345)
    return shared_tokenizer(texts, vocab_size, folder, train=train_tokenizer, kind="bpe")


class Texts(torch.utils.data.Dataset):
    def __init__(self, texts: list[str], tokenizer):
        self.ids = [torch.tensor(e.ids, dtype=torch.long) for e in tokenizer.encode_batch(texts)]
        self.lengths = [len(ids) for ids in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def load(task: str = "stories", train_size: int = 6000, val_size: int = 600, seed: int = 0, vocab_size: int = 512,
         tokenizer_dir: str = "runs/tokenizers"):
    """The data factory: {"train": ..., "val": ...} of `task` (stories, mirror). Every process
    makes the same texts and reads the same tokenizer (trained on first use, in `tokenizer_dir`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    tokenizer = tokenizer_for(vocab_size, tokenizer_dir)
    texts = make_texts(task, train_size + val_size, seed)
    return {"train": Texts(texts[:train_size], tokenizer), "val": Texts(texts[train_size:], tokenizer)}


def tokenizer(vocab_size: int = 512, tokenizer_dir: str = "runs/tokenizers"):
    """The examples' tokenizer, as a run of examples/lm/config.yaml trained it (for
    `python -m train.generate runs/lm "..." --tokenizer examples.lm.data:tokenizer`). Never trained
    here: another training would not give the same bits, and the model would read other ids."""
    from pathlib import Path

    if not list(Path(tokenizer_dir).glob(f"bpe-{vocab_size}-*.json")):
        raise FileNotFoundError(f"no tokenizer in {tokenizer_dir}: the run of examples/lm/config.yaml writes it")
    return tokenizer_for(vocab_size, tokenizer_dir)
