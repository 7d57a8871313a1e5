"""Tiny datasets in the files their publishers ship, for tests that must not download."""

from __future__ import annotations

import gzip
import struct

import numpy as np

from raykube import data


def _idx(path, array: np.ndarray, *, labels: bool) -> None:
    """Write an idx file (the MNIST/FashionMNIST format), gzip'd, like the official ones."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root, n_train: int = 60, n_test: int = 20) -> tuple[np.ndarray, ...]:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for name, arr in zip(data.FASHION_FILES, arrays, strict=True):
        _idx(raw / f"{name}.gz", arr, labels=arr.ndim == 1)
    return arrays
