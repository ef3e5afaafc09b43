"""IDX files (MNIST's format), read by hand: the format is 20 lines, and torchvision's reader needs
its own folder layout. Every file is checked against its header (magic number, dimensions, the
length the header declares) before any of it is used, whatever part of it a run reads."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np

from train.base.errors import DataError
from train.base.paths import SHIPPED_MNIST


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path, expect_ndim: Optional[int] = None, records: Optional[int] = None) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed), checking its magic number and size. With
    `records`, only the first that many are read (a smoke run need not inflate 47 MB); the file's
    full length is then not checked.

    Written by hand: the format is 20 lines, and torchvision's reader needs its own folder layout.
    """
    path = Path(path)
    if not path.is_file():
        shipped = SHIPPED_MNIST
        restore = "restore it with `git checkout -- data/mnist`" if path.parent.resolve() == shipped else "put it there"
        raise DataError(f"data file '{path}' not found; {restore}, or point data.path at the folder that holds it")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(4)
            if len(raw) == 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in IDX_DTYPES:
                raw += f.read(4 * raw[3])
                shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3]))
                if records is not None and shape and records < shape[0]:
                    record = int(np.prod(shape[1:])) * np.dtype(IDX_DTYPES[raw[2]]).itemsize
                    raw += f.read(records * record)
                else:
                    raw += f.read()
    except EOFError:  # a gzip stream cut short
        raise DataError(f"data file '{path}' is truncated (its compressed stream ends early); "
                        f"replace it with a good copy") from None
    except OSError as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"data file '{path}' is corrupt ({e}); replace it with a good copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"data file '{path}' is not an IDX file (bad magic number "
                        f"{raw[:4].hex() or 'empty'}); replace it with a good copy")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"data file '{path}' holds {ndim}-d records, expected {expect_ndim}-d; "
                        f"images and labels may be swapped")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if records is not None and shape and records < shape[0]:
        _check_full_length(path, header + int(np.prod(shape)) * dtype.itemsize, shape)
        shape = (records, *shape[1:])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"data file '{path}' is truncated or padded: {len(raw)} bytes, expected "
                        f"{expected} for shape {shape}; replace it with a good copy")
    # copied out of the read-only bytes: torch refuses to wrap non-writable arrays quietly
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()


def _check_full_length(path: Path, expected: int, shape: tuple) -> None:
    """The whole file's length against its header, without inflating it (a smoke run reads only
    its first records). A gzip file ends with its inflated length modulo 2**32 (RFC 1952, ISIZE);
    a file cut short ends in the middle of its stream, so those bytes are anything else."""
    size = path.stat().st_size
    if path.suffix == ".gz":
        with open(path, "rb") as f:
            f.seek(max(0, size - 4))
            actual = int.from_bytes(f.read(4), "little")
        if actual != expected % 2**32:
            raise DataError(f"data file '{path}' is truncated or padded: its header declares shape {shape} "
                            f"({expected} bytes), but the file does not hold them; replace it with a good copy")
    elif size != expected:
        raise DataError(f"data file '{path}' is truncated or padded: {size} bytes, expected {expected} for "
                        f"shape {shape}; replace it with a good copy")


def idx_count(path: str | Path) -> int:
    """The number of records an IDX file's header declares."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read(8)
    return int.from_bytes(raw[4:8], "big")
