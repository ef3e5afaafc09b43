import gzip
import os
import shutil

import numpy as np
import pytest
import torch

from train.data.loaders import InMemoryDataset, channel_stats, choose_num_workers, make_loaders
from train.data.sources import load_mnist, read_idx
from train.base.errors import DataError

from conftest import MNIST, need_module

# from data/mnist/README.md
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_idx_reader_matches_the_readme_checks():
    train, test = load_mnist(MNIST, "train"), load_mnist(MNIST, "test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.labels).tolist() == TEST_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.images.double().mean().item() == pytest.approx(33.3184, abs=1e-4)
    mean, std = channel_stats(train.images)
    assert mean[0] == pytest.approx(0.13066, abs=1e-5) and std[0] == pytest.approx(0.3081, abs=1e-4)


def test_truncated_file_is_named(tmp_path):
    raw = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(raw[:-100])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte' is truncated.*expected 10008"):
        read_idx(bad)
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cut.gz' is truncated \(its compressed stream ends early\)"):
        read_idx(cut_gzip)


def mnist_copy(folder):
    folder.mkdir()
    for f in MNIST.glob("*.gz"):
        shutil.copy(f, folder)
    return folder


def test_a_short_file_is_refused_whatever_the_run_reads_of_it(tmp_path):
    """A smoke run reads only the first records; the files' lengths are checked all the same."""
    half = mnist_copy(tmp_path / "half")
    images = half / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:images.stat().st_size // 2])  # the first half, labels intact
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz' is truncated or padded: its header "
                                        r"declares shape \(60000, 28, 28\)"):
        load_mnist(half, "train", records=256)
    short = mnist_copy(tmp_path / "short")
    labels = short / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:-1]))  # one item short of what the header says
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz' is truncated or padded"):
        load_mnist(short, "train", records=256)
    fewer = mnist_copy(tmp_path / "fewer")  # consistent files, but 59999 labels for 60000 images
    labels = fewer / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[4:8] = (59999).to_bytes(4, "big")
    labels.write_bytes(gzip.compress(bytes(raw[:-1])))
    with pytest.raises(DataError, match=r"MNIST train: 60000 images but 59999 labels"):
        load_mnist(fewer, "train", records=256)
    assert len(load_mnist(MNIST, "train", records=256)) == 256  # the good files still read fast


def test_wrong_magic_number_is_named(tmp_path):
    raw = bytearray(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[2] = 0x42
    bad = tmp_path / "labels.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"labels.gz' is not an IDX file \(bad magic number 00004201\)"):
        read_idx(bad)


def test_missing_file_and_swapped_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mnist(tmp_path, "train")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST / name, tmp_path / name)
    (tmp_path / "t10k-images-idx3-ubyte.gz").rename(tmp_path / "x")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="1-d records, expected 3-d"):
        load_mnist(tmp_path, "test")


def test_fast_path_batches_are_normalised_slices():
    data = load_mnist(MNIST, "test").head(300)
    ds = InMemoryDataset(data, [0.1307], [0.3081])
    x, y = ds.__getitems__([5, 0, 299])
    expected = (data.images[[5, 0, 299]].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, expected, atol=1e-5) and y.tolist() == data.labels[[5, 0, 299]].tolist()


def test_loaders_are_seeded_and_in_memory(small_cfg):
    a, b = make_loaders(small_cfg, seed=3), make_loaders(small_cfg, seed=3)
    c = make_loaders(small_cfg, seed=4)
    first = lambda loaders: next(iter(loaders.train))[1]
    assert torch.equal(first(a), first(b)) and not torch.equal(first(a), first(c))
    assert a.train.num_workers == 0 and not a.train.pin_memory
    assert len(a.train.dataset) == 2048 and len(a.val.dataset) == 1001
    x, y = next(iter(a.val))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32


def test_num_workers_rule():
    assert choose_num_workers(None, True, 1)[0] == 0
    assert choose_num_workers(3, True, 1)[0] == 3
    cpus = len(os.sched_getaffinity(0))
    assert choose_num_workers(None, False, 1) == (min(8, cpus - 1), f"num_workers={min(8, cpus - 1)}: {cpus} CPU(s) "
                                                                    f"per process, one kept for the main thread")
    assert choose_num_workers(None, False, 2)[0] == max(0, min(8, cpus // 2 - 1))  # two processes share the CPUs
    import unittest.mock

    with unittest.mock.patch("os.sched_getaffinity", return_value=set(range(24))):  # a machine of 24 CPUs
        assert choose_num_workers(None, False, 1)[0] == 8  # the cap
        assert choose_num_workers(None, False, 4)[0] == 5  # 6 CPUs a process, one kept


def test_labels_outside_num_classes(small_cfg):
    small_cfg.data.num_classes = 5
    with pytest.raises(DataError, match=r"labels range over 0..9 but data.num_classes=5; set data.num_classes=10"):
        make_loaders(small_cfg, num_classes=5)
    make_loaders(small_cfg)  # a regression task: no classes to check against


def test_torchvision_source_reads_an_offline_root(torchvision_root, small_cfg):
    small_cfg.data.source, small_cfg.data.name, small_cfg.data.path = "torchvision", "MNIST", str(torchvision_root)
    loaders = make_loaders(small_cfg)
    reference = make_loaders(small_cfg.__class__(data=small_cfg.data.__class__(train_size=2048, val_size=1001,
                                                                               path=str(MNIST))))
    assert torch.equal(loaders.val.dataset.images, reference.val.dataset.images)
    small_cfg.data.name = "NoSuchSet"
    with pytest.raises(DataError, match="torchvision has no data set 'NoSuchSet'"):
        make_loaders(small_cfg)


def test_hugging_face_parquet_source(tmp_path, small_cfg):
    datasets = need_module("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        pixels = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
        ds = datasets.Dataset.from_dict(
            {"img": [Image.fromarray(p) for p in pixels], "digit": list(range(n))},
            features=datasets.Features(img=datasets.Image(), digit=datasets.Value("int64")))
        ds.to_parquet(str(tmp_path / f"{split}.parquet"))
    small_cfg.data.source, small_cfg.data.name, small_cfg.data.path = "hf", "parquet", str(tmp_path)
    small_cfg.data.image_column, small_cfg.data.label_column = "img", "digit"
    small_cfg.data.num_classes = 40
    loaders = make_loaders(small_cfg)
    assert loaders.train.dataset.images.shape == (40, 1, 8, 8)
    assert loaders.val.dataset.labels.tolist() == list(range(12))
    small_cfg.data.label_column = "label"
    with pytest.raises(DataError, match="no column 'label'"):
        make_loaders(small_cfg)
