"""Where the data comes from and how it becomes batches: sources, IDX files, loaders and the
in-memory fast path, samples and batches (`batches`) and the one walk over nested tensors
(`nested`), length grouping, seeded per-sample draws, streams, loader tuning. Knows nothing of
training or the run."""

from train.data.loaders import make_loaders  # noqa: F401
