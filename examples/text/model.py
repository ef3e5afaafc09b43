"""The example's model: a small `transformers` BERT encoder with a classification head, built from
its config (no download). It takes `input_ids`, `attention_mask` and `labels` and returns a
`SequenceClassifierOutput` with its own `loss` and the `logits`."""


def encoder(vocab_size: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 2, num_labels: int = 4):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=128, num_labels=num_labels)
    return BertForSequenceClassification(config)
