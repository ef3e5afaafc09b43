"""A tiny `transformers` model built from its config (no download), for the tests."""


def tiny_bert(vocab_size: int = 50, num_labels: int = 2, hidden: int = 32, layers: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, num_labels=num_labels, max_position_embeddings=128)
    return BertForSequenceClassification(config)
