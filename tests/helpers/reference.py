"""Independent references for the tests' exactness claims: plain torch and numpy written here,
importing nothing of `train`, so that a weighting or gathering mistake of the project's own loop
cannot hide by being compared with itself.

- `mnist(split, size, stats_size)`: MNIST read from its IDX files with gzip and numpy, normalised
  with the mean and standard deviation of the first `stats_size` training images (what a run of
  `data.train_size=stats_size` normalises with);
- `classifier_scores(model, inputs, labels)`: the cross-entropy loss (summed per sample, over the
  number of samples) and the accuracy, computed sample by sample in float64;
- `regression_scores(model, inputs, targets)`: the mean squared and absolute errors likewise.
"""

import gzip
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist(split: str, size: int, stats_size: int, folder: Path = ROOT / "data" / "mnist"):
    """(images as normalised float32 (N, 1, 28, 28), labels int64) of the first `size` samples."""
    train_images = _idx(folder / FILES["train"][0])[:stats_size].astype(np.float64) / 255
    mean, std = train_images.mean(), train_images.std()
    images = _idx(folder / FILES[split][0])[:size]
    labels = _idx(folder / FILES[split][1])[:size]
    # (x / 255 - mean) / std as one multiply-add in float32: x * scale + shift with scale =
    # 1 / (255 std) and shift = -mean / std, each computed in float32
    std32, mean32 = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
    scale, shift = 1.0 / (255.0 * std32), -mean32 / std32
    x = torch.addcmul(shift, torch.from_numpy(images.astype(np.float32))[:, None], scale)
    return x, torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def classifier_scores(model, inputs, labels, batch_size: int = 256) -> dict:
    """`{"val_loss", "val_accuracy"}`: summed per-sample cross entropy over N, and hits over N."""
    model.eval()
    loss, hits = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x, y = _rows(inputs, start, batch_size), labels[start:start + batch_size]
        logits = _call(model, x).double()
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        hits += int((logits.argmax(dim=1) == y).sum())
    return {"val_loss": loss / len(labels), "val_accuracy": hits / len(labels)}


@torch.no_grad()
def regression_scores(model, inputs, targets, batch_size: int = 256) -> dict:
    """`{"val_mse", "val_mae"}` over every sample (the mean over outputs per sample, then samples)."""
    model.eval()
    squared, absolute = 0.0, 0.0
    for start in range(0, len(targets), batch_size):
        x, y = _rows(inputs, start, batch_size), targets[start:start + batch_size].double()
        error = (_call(model, x).double().reshape(len(y), -1) - y.reshape(len(y), -1))
        squared += error.pow(2).mean(dim=1).sum().item()
        absolute += error.abs().mean(dim=1).sum().item()
    return {"val_mse": squared / len(targets), "val_mae": absolute / len(targets)}


def _rows(inputs, start, size):
    if isinstance(inputs, dict):
        return {k: v[start:start + size] for k, v in inputs.items()}
    if isinstance(inputs, list):  # samples of their own lengths: one at a time
        return inputs[start]
    return inputs[start:start + size]


def _call(model, x):
    out = model(**x) if isinstance(x, dict) else model(x)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def one_at_a_time(model, samples) -> dict:
    """Classifier scores over variable-length samples, `(tokens, label)` or `{"input_ids", "labels"}`,
    each alone (no padding at all)."""
    model.eval()
    loss, hits = 0.0, 0
    for sample in samples:
        if isinstance(sample, dict):
            tokens, label = sample["input_ids"], int(sample["labels"])
            logits = _call(model, {"input_ids": torch.as_tensor(tokens)[None]}).double()
        else:
            tokens, label = sample
            logits = _call(model, torch.as_tensor(tokens)[None]).double()
        target = torch.tensor([label])
        loss += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        hits += int(logits.argmax(dim=1).item() == label)
    return {"val_loss": loss / len(samples), "val_accuracy": hits / len(samples)}


def _named(path: str):
    import importlib

    module, _, name = path.replace(":", ".").rpartition(".") if ":" not in path else path.partition(":")
    return getattr(importlib.import_module(module), name)


def settings_of(args) -> dict:
    """The model, its arguments, the data factory and its arguments that a config file and its
    `key=value` overrides name (read with PyYAML, not with the project's config code)."""
    import yaml

    settings = {}
    if args[:1] == ["--config"]:
        tree = yaml.safe_load((ROOT / args[1]).read_text())
        settings = {"model": tree["model"], "model_args": tree.get("model_args", {}), "loss": tree.get("loss"),
                    "factory": tree["data"]["factory"], "args": tree["data"].get("args", {})}
    names = {"model": "model", "model_args": "model_args", "loss": "loss", "data.factory": "factory",
             "data.args": "args"}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in names:
            settings[names[key]] = yaml.safe_load(value)
        elif sep and key.startswith("data.args."):
            settings.setdefault("args", {})[key[len("data.args."):]] = yaml.safe_load(value)
    return settings


def scores_of_run(args, out: Path, weights: str = "model.safetensors") -> dict:
    """The validation scores of the run folder `out`'s final weights, in plain torch: the config's
    own model and data factory (user code), the weights from `weights` (default `model.safetensors`)."""
    from safetensors.torch import load_file

    s = settings_of(args)
    model = _named(s["model"])(**s.get("model_args", {}))
    model.load_state_dict(load_file(str(Path(out) / weights)))
    made = _named(s["factory"])(**s.get("args", {}))
    val = made["val"] if isinstance(made, dict) else made[1]
    if isinstance(val, torch.utils.data.TensorDataset):
        x, y = val.tensors
        if s.get("loss") == "mse":
            scores = regression_scores(model, x, y)
            return {"val_loss": scores["val_mse"], "val_mae": scores["val_mae"]}
        return classifier_scores(model, x, y)
    return one_at_a_time(model, [val[i] for i in range(len(val))])
