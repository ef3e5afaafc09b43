"""A text classification data set the example makes itself (no download), tokenised by a WordPiece
tokenizer trained on its training texts with Hugging Face `tokenizers`.

Four topics (sports, science, cooking, travel); each text is 5-60 words: topic words, words shared
by every topic, and a few words of another topic as noise, so that a model has to weigh the words,
not spot one. Samples are dicts `{"input_ids": LongTensor, "labels": int}`, as a tokenizer and a
`datasets` row give them; the sets expose `lengths` for length-grouped batches."""

from __future__ import annotations

import random

import torch

TOPICS = {
    "sports": "match team goal coach season league player score referee stadium tournament striker defender "
              "champion victory penalty training fans pitch transfer",
    "science": "experiment theory molecule energy particle physics chemistry data laboratory hypothesis cell "
               "genome telescope orbit quantum research evidence sample measurement",
    "cooking": "recipe oven garlic flour butter simmer sauce kitchen roast onion pepper dough bake spice "
               "tomato olive saucepan dessert chef",
    "travel": "flight hotel passport beach museum train luggage island tour guide map journey ticket city "
              "mountain border airport hostel itinerary",
}
SHARED = ("the a an and or but with of in on at for to from is was were be been this that it they we you "
          "very really quite new old good great small large first last many some every after before "
          "during today yesterday week year people time place way day thing part").split()
PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


def make_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    names = list(TOPICS)
    words = {t: TOPICS[t].split() for t in names}
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(names))
        length = rng.randint(5, 60)
        text = []
        for _ in range(length):
            r = rng.random()
            if r < 0.25:
                text.append(rng.choice(words[names[label]]))
            elif r < 0.33:
                text.append(rng.choice(words[rng.choice(names)]))  # noise: any topic's word
            else:
                text.append(rng.choice(SHARED))
        texts.append(" ".join(text))
        labels.append(label)
    return texts, labels


def train_tokenizer(texts: list[str], vocab_size: int = 1000):
    """A WordPiece tokenizer (BERT's normalisation and splitting) trained on `texts`; every text is
    encoded as `[CLS] ... [SEP]`, and `[PAD]` is id 0 (the padding collate's default value)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, CLS, SEP], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))])
    return tokenizer


class Texts(torch.utils.data.Dataset):
    def __init__(self, texts: list[str], labels: list[int], tokenizer):
        self.texts = texts
        self.ids = [torch.tensor(e.ids, dtype=torch.long) for e in tokenizer.encode_batch(texts)]
        self.labels = labels
        self.lengths = [len(ids) for ids in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def shared_tokenizer(texts: list[str], vocab_size: int, folder: str, train=train_tokenizer, kind: str = "wordpiece"):
    """The tokenizer of these texts, trained once by `train(texts, vocab_size)` and kept in `folder`
    (named by `kind`, a hash of the texts and the vocabulary size). Training is not deterministic
    (the trainer breaks ties between equally frequent merges in no fixed order), so every process of
    a run, a resumed run, and a later evaluation must read the same file: the first process to get
    the lock trains and saves it."""
    import fcntl
    import hashlib
    import os
    from pathlib import Path

    from tokenizers import Tokenizer

    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = Path(folder) / f"{kind}-{vocab_size}-{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here while the first one trains
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            train(texts, vocab_size).save(str(tmp))
            os.replace(tmp, path)
    return Tokenizer.from_file(str(path))


def load(train_size: int = 8000, val_size: int = 2000, seed: int = 0, vocab_size: int = 1000,
         tokenizer_dir: str = "runs/tokenizers"):
    """The data factory: {"train": ..., "val": ...}. Every process makes the same texts and reads
    the same tokenizer (trained on the training texts on first use, in `tokenizer_dir`)."""
    texts, labels = make_texts(train_size + val_size, seed)
    tokenizer = shared_tokenizer(texts[:train_size], vocab_size, tokenizer_dir)
    return {"train": Texts(texts[:train_size], labels[:train_size], tokenizer),
            "val": Texts(texts[train_size:], labels[train_size:], tokenizer)}
