"""Writes small, real IDX files (the MNIST on-disk format) for tests."""

import gzip
import os

import numpy as np

NUM_TRAIN = 5120  # > 5,000: the first 5,000 become val, the other 120 train
NUM_TEST = 60


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 + array.ndim  # uint8, ndim dimensions
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def digit_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 uint8 'digits': a random blob whose brightness encodes nothing but is non-empty."""
    rng = np.random.default_rng(seed)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    images[:, 6:22, 8:20] = rng.integers(1, 256, (len(labels), 16, 12))
    return images


def write_idx_set(directory: str, gz: bool = False, seed: int = 0) -> dict:
    """Four IDX files with fixed labels; returns the labels written."""
    rng = np.random.default_rng(seed)
    labels = {"train": rng.integers(0, 10, NUM_TRAIN), "t10k": rng.integers(0, 10, NUM_TEST)}
    os.makedirs(directory, exist_ok=True)
    for part, y in labels.items():
        for stem, array in ((f"{part}-images-idx3-ubyte", digit_images(y, seed + len(y))),
                            (f"{part}-labels-idx1-ubyte", y)):
            data = _idx_bytes(array)
            path = os.path.join(directory, stem + (".gz" if gz else ""))
            with (gzip.open if gz else open)(path, "wb") as f:
                f.write(data)
    return labels
