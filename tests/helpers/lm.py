"""A tiny causal language model and variable-length token data for the tests (no download), and
the plain-torch references the tests hold the service to.

The data: sequences of 5-40 tokens that count upwards by a step of their own (mod the vocabulary),
so a model can learn them; dict samples `{"input_ids", "labels"}` with `labels` equal to the
inputs, as `transformers` causal models take them (they shift the labels themselves)."""

import torch


def tiny_gpt2(vocab_size: int = 64, hidden: int = 32, layers: int = 2, heads: int = 2, positions: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # its class name matches none of transformers' losses: say which (no warning)
    return model


class Counting(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int, vocab: int = 64, shortest: int = 5, longest: int = 40):
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(shortest, longest + 1, (n,), generator=g).tolist()
        starts = torch.randint(2, vocab, (n,), generator=g).tolist()
        steps = torch.randint(1, 4, (n,), generator=g).tolist()
        self.tokens = [torch.tensor([2 + (s + k * d) % (vocab - 2) for k in range(n)]) for n, s, d in
                       zip(self.lengths, starts, steps)]

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i].clone()}


def load(train_size: int = 512, val_size: int = 101, seed: int = 0):
    return Counting(train_size, seed), Counting(val_size, seed + 1)


@torch.no_grad()
def token_loss(model, samples) -> float:
    """The token-level loss, in plain torch: each sample alone (no padding), next-token cross
    entropy summed over every target token of every sample, over their number."""
    model.eval()
    total, count = 0.0, 0
    for s in samples:
        ids = s["input_ids"][None]
        logits = model(input_ids=ids).logits[0, :-1].double()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return total / count
