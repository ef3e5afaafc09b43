"""The example's model: a small GPT-2 built from its config (no download). It takes `input_ids`,
`attention_mask` and `labels` and returns a `CausalLMOutputWithCrossAttentions` with its own
next-token `loss` and the `logits`. `GPT2ForCausalLM` is transformers' GPT-2 under a name its loss
lookup knows (`GPT2LMHeadModel` matches none and falls back to the causal loss with a warning):
the fine-tuning config loads the first run's `hf/` folder with its `from_pretrained`."""

from transformers import GPT2Config, GPT2LMHeadModel


class GPT2ForCausalLM(GPT2LMHeadModel):
    pass


def gpt2(vocab_size: int = 512, hidden: int = 64, layers: int = 2, heads: int = 2, positions: int = 128):
    config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                        bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return GPT2ForCausalLM(config)
