"""A variable-length sequence task for the tests (lengths 5-60): is the majority of a sequence's
tokens in the lower half of the vocabulary? Samples are (tokens, label), or dicts holding
`input_ids` and `labels` (`as_dicts=True`); 0 is the padding token."""

import torch
from torch import nn


class Sequences(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int, vocab: int = 50, shortest: int = 5, longest: int = 60,
                 as_dicts: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(shortest, longest + 1, (n,), generator=g).tolist()
        self.tokens = [torch.randint(1, vocab, (n,), generator=g) for n in self.lengths]
        self.labels = [int((t < vocab // 2).sum() * 2 > len(t)) for t in self.tokens]
        self.as_dicts = as_dicts

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        if self.as_dicts:
            return {"input_ids": self.tokens[i], "labels": self.labels[i]}
        return self.tokens[i], self.labels[i]


def load(train_size: int = 2000, val_size: int = 501, seed: int = 0, as_dicts: bool = False):
    return Sequences(train_size, seed, as_dicts=as_dicts), Sequences(val_size, seed + 1, as_dicts=as_dicts)


class MeanPool(nn.Module):
    """Embeddings averaged over the real tokens (padding ignored exactly: its embedding is zero and
    it is not counted), then a linear layer: padding to any length gives the same outputs."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 2, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, classes)

    def forward(self, tokens):
        real = (tokens != 0).unsqueeze(-1)
        return self.out(self.dropout((self.embed(tokens) * real).sum(1) / real.sum(1)))


def load_float_labels(train_size: int = 64, val_size: int = 32):
    """A regression-style target (floats) that a classification loss cannot take."""
    train, val = load(train_size, val_size)
    for ds in (train, val):
        ds.labels = [float(y) for y in ds.labels]
    return train, val


class ReturnsASet(MeanPool):
    """A model whose output no loss or metric can take."""

    def forward(self, tokens):
        return {"not", "a", "tensor"}
