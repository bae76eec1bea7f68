"""MNIST sources, nMNIST composition, TFRecords and the input pipeline, on small data."""

import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from needles_tf.data import make_dataset, records
from needles_tf.data.mnist import MnistError, load_mnist, read_idx
from needles_tf.data.nmnist import DIGIT, PAPER_PRESETS, NMnistConfig, compose, make_nmnist, split_size
from needles_tf.data.noise import make_noise_dataset
from needles_tf.data.pipeline import select_training_subset


def write_idx(path: pathlib.Path, array: np.ndarray, compress: bool = False) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.fixture(scope="module")
def embedded():
    return load_mnist("embedded")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory, embedded):
    """A small IDX set of real digits: 5,300 training images (5,000 become val), 400 test."""
    directory = tmp_path_factory.mktemp("idx")
    pool = np.concatenate([embedded[s].images for s in ("train", "val", "test")])
    labels = np.concatenate([embedded[s].labels for s in ("train", "val", "test")])
    order = np.random.default_rng(0).permutation(len(pool))
    train_ix = np.concatenate([order, order[:300]])
    write_idx(directory / "train-images-idx3-ubyte.gz", pool[train_ix], compress=True)
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels[train_ix], compress=True)
    write_idx(directory / "t10k-images-idx3-ubyte", pool[order[:400]])
    write_idx(directory / "t10k-labels-idx1-ubyte", labels[order[:400]])
    return directory


def test_embedded_split_is_70_10_20_per_class(embedded):
    for digit in range(10):
        counts = [int(np.sum(embedded[s].labels == digit)) for s in ("train", "val", "test")]
        assert counts == [350, 50, 100]


def test_idx_source_follows_mnist_split(idx_dir):
    digits = load_mnist(f"idx:{idx_dir}")
    assert [len(digits[s].labels) for s in ("train", "val", "test")] == [300, 5000, 400]
    train_images = read_idx(idx_dir / "train-images-idx3-ubyte.gz", 3)
    np.testing.assert_array_equal(digits["val"].images, train_images[:5000])


def test_counts_per_split_follow_the_rule(idx_dir, tmp_path):
    config = NMnistConfig(canvas_size=32, num_clutter=1, mnist=f"idx:{idx_dir}")
    digits = load_mnist(config.mnist)
    metadata = make_nmnist(tmp_path, config, num_shards=2, progress=False)
    for split, reuse in (("train", 1), ("val", 2), ("test", 2)):
        needles = int(np.sum(digits[split].labels == 3))
        info = metadata["splits"][split]
        assert info["count"] == 2 * reuse * needles == split_size(digits[split], config, split)
        assert info["positives"] == info["negatives"] == reuse * needles
        written = sum(1 for path in records.shard_paths(tmp_path, split)
                      for _ in tf.data.TFRecordDataset(path))
        assert written == info["count"]


def test_paper_counts_with_full_mnist_label_counts():
    """The paper's 11276 / 1972 / 4040 from MNIST's digit-3 counts (5638 / 493 / 1010)."""
    from needles_tf.data.mnist import Digits
    config = NMnistConfig()
    for split, threes, expected in (("train", 5638, 11276), ("val", 493, 1972), ("test", 1010, 4040)):
        labels = np.array([3] * threes + [0] * 10, np.uint8)
        assert split_size(Digits(np.zeros((len(labels), 28, 28), np.uint8), labels), config, split) == expected
    assert split_size(Digits(None, np.array([3] * 5638, np.uint8)),
                      NMnistConfig(train_duplicates=2), "train") == 22552


@pytest.mark.parametrize("o2i, canvas", [("19.1", 64), ("4.8", 128), ("1.2", 256), ("0.3", 512), ("0.075", 1024)])
def test_preset_o2i(o2i, canvas):
    text = pathlib.Path(f"flags/nmnist/o2i_{o2i}.cfg").read_text()
    assert f"--canvas_size={canvas}" in text and f"--num_clutter={PAPER_PRESETS[canvas]}" in text
    assert f"{100 * NMnistConfig(canvas_size=canvas).o2i:.2g}" == f"{float(o2i):.2g}"


def test_needle_only_inside_its_box(embedded):
    config = NMnistConfig(canvas_size=96, num_clutter=6, seed=5)
    digits = embedded["val"]
    for index in range(40):
        image, label, bbox, chosen, corners = compose(digits, config, "val", index)
        is_needle = digits.labels[chosen] == 3
        assert label == int(is_needle.any()) and is_needle.sum() == label
        assert len(chosen) == config.num_clutter + 1
        if label:
            y0, x0, y1, x1 = bbox
            assert (y1 - y0, x1 - x0) == (DIGIT, DIGIT)
            assert 0 <= y0 and y1 <= 96 and 0 <= x0 and x1 <= 96
            window = image[y0:y1, x0:x1, 0].astype(int)
            assert np.all(window >= digits.images[chosen[0]])  # additive: needle fully present
        # Rebuilding the canvas from the recorded digits reproduces it exactly (saturating add).
        canvas = np.zeros((96, 96), int)
        for digit, (y, x) in zip(chosen, corners):
            canvas[y:y + DIGIT, x:x + DIGIT] += digits.images[digit]
        np.testing.assert_array_equal(image[..., 0], np.minimum(canvas, 255))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nmnist")
    make_nmnist(directory, NMnistConfig(canvas_size=48, num_clutter=2), num_shards=3, progress=False)
    return directory


def test_records_round_trip(small_dataset, embedded):
    config = NMnistConfig(canvas_size=48, num_clutter=2)
    path = records.shard_paths(small_dataset, "val")[0]
    for index, serialized in enumerate(tf.data.TFRecordDataset(path).take(6)):
        parsed = records.parse_example(serialized)
        image, label, bbox, chosen, _ = compose(embedded["val"], config, "val", index)
        np.testing.assert_array_equal(tf.io.decode_png(parsed["image/encoded"]).numpy(), image)
        assert int(parsed["label"]) == label
        assert list(parsed["object/bbox"].numpy()) == (list(bbox) if label else [])
        assert abs(float(parsed["o2i"]) - (config.o2i if label else 0)) < 1e-6
        assert int(parsed["clutter/count"]) == 2 and int(parsed["image/channels"]) == 1
        assert parsed["source/id"].numpy().decode().endswith(",".join(map(str, chosen)))


def test_bytes_identical_across_worker_counts(tmp_path):
    config = NMnistConfig(canvas_size=32, num_clutter=1, seed=9)
    one = make_nmnist(tmp_path / "one", config, num_shards=2, workers=1, progress=False)
    two = make_nmnist(tmp_path / "two", config, num_shards=2, workers=2, progress=False)
    assert one["splits"] == two["splits"]
    for split in one["splits"]:
        for a, b in zip(records.shard_paths(tmp_path / "one", split), records.shard_paths(tmp_path / "two", split)):
            assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()


def test_resume_keeps_finished_shards_and_rewrites_missing(tmp_path):
    config = NMnistConfig(canvas_size=32, num_clutter=1)
    first = make_nmnist(tmp_path, config, num_shards=3, progress=False)
    # Simulate an interruption: the sidecar is not written yet, one shard missing, one torn.
    (tmp_path / "dataset.json").rename(tmp_path / "dataset.json.partial")
    kept = tmp_path / records.shard_name("train", 0, 3)
    missing = tmp_path / records.shard_name("val", 1, 3)
    torn = tmp_path / records.shard_name("test", 2, 3)
    kept_mtime = kept.stat().st_mtime_ns
    missing.unlink()
    torn.write_bytes(torn.read_bytes()[:100])
    second = make_nmnist(tmp_path, config, num_shards=3, progress=False)
    assert second["splits"] == first["splits"]
    assert kept.stat().st_mtime_ns == kept_mtime
    assert missing.is_file() and records.sha256(torn) == first["splits"]["test"]["shards"][2]["sha256"]


def test_other_parameters_need_overwrite(tmp_path):
    make_nmnist(tmp_path, NMnistConfig(canvas_size=32, num_clutter=0), num_shards=1, progress=False)
    with pytest.raises(records.RecordsError, match="other parameters.*--overwrite"):
        make_nmnist(tmp_path, NMnistConfig(canvas_size=32, num_clutter=1), num_shards=1, progress=False)
    make_nmnist(tmp_path, NMnistConfig(canvas_size=32, num_clutter=1), num_shards=1, overwrite=True, progress=False)
    assert records.read_metadata(tmp_path)["params"]["num_clutter"] == 1


def test_pipeline_yields_float_images_and_labels(small_dataset):
    images, labels = next(iter(make_dataset(small_dataset, "test", 16, training=False)))
    assert images.shape == (16, 48, 48, 1) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert set(labels.numpy()) <= {0, 1}


def _epoch_labels(data):
    return np.concatenate([labels.numpy() for _, labels in data])


def test_train_size_subsets_are_nested(small_dataset):
    labels = np.array([1, 0] * 350)
    small = set(select_training_subset(labels, 100, None, seed=3))
    large = set(select_training_subset(labels, 300, None, seed=3))
    assert len(small) == 100 and small < large
    assert len(_epoch_labels(make_dataset(small_dataset, "train", 32, True, train_size=100, seed=3))) == 100


def test_class_balance_sets_share_and_oversamples(small_dataset):
    labels = np.array([1, 0] * 350)
    subset = select_training_subset(labels, 200, 0.1, seed=0)
    assert len(subset) == 200 and labels[subset].sum() == 20
    epoch = _epoch_labels(make_dataset(small_dataset, "train", 50, True, train_size=200,
                                       class_balance=0.1, seed=0, deterministic=True))
    assert len(epoch) == 200 and 0.35 < epoch.mean() < 0.65  # minority oversampled to ~half


def test_deterministic_mode_repeats_exactly(small_dataset):
    def first_epoch():
        return _epoch_labels(make_dataset(small_dataset, "train", 32, True, seed=4, deterministic=True))
    np.testing.assert_array_equal(first_epoch(), first_epoch())


def test_noise_dataset_is_deterministic_by_seed():
    a = [x.numpy() for x, _ in make_noise_dataset(6, 8, 8, 1, 6, seed=1, training=False)][0]
    b = [x.numpy() for x, _ in make_noise_dataset(6, 8, 8, 1, 6, seed=1, training=False)][0]
    c = [x.numpy() for x, _ in make_noise_dataset(6, 8, 8, 1, 6, seed=2, training=False)][0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and abs(a.std() - 1) < 0.3


# --- bad input ---------------------------------------------------------------------------------

def test_idx_errors_name_the_file(tmp_path, idx_dir):
    with pytest.raises(MnistError, match="t10k-images-idx3-ubyte.*not found"):
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
            (tmp_path / name).write_bytes((idx_dir / name).read_bytes())
        load_mnist(f"idx:{tmp_path}")
    bad = tmp_path / "labels"
    bad.write_bytes((1234).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(MnistError, match=f"{bad}: wrong magic number 1234, expected 2049"):
        read_idx(bad, 1)
    bad.write_bytes((2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(MnistError, match=f"{bad}: truncated"):
        read_idx(bad, 1)
    with pytest.raises(MnistError, match="must be 'embedded'"):
        load_mnist("mnist.org")


def test_offline_keras_source_gets_clear_error(monkeypatch):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(MnistError, match="--mnist=keras needs to download.*offline"):
        load_mnist("keras")


def test_corrupt_shard_and_schema_errors_name_the_file(small_dataset, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = pathlib.Path(records.shard_paths(copy, "val")[0])
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(records.RecordsError, match=f"{shard}: corrupt shard"):
        make_dataset(copy, "val", 8, training=False)
    sidecar = copy / "dataset.json"
    sidecar.write_text(sidecar.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    with pytest.raises(records.RecordsError, match=f"{sidecar}: schema_version 2"):
        make_dataset(copy, "val", 8, training=False)
    with pytest.raises(records.RecordsError, match="dataset.json: missing"):
        make_dataset(tmp_path, "val", 8, training=False)


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="canvas_size must be at least 28"):
        NMnistConfig(canvas_size=20)
    with pytest.raises(ValueError, match="num_clutter must be >= 0"):
        NMnistConfig(num_clutter=-1)


def test_binary_writes_dataset_and_reports_bad_source(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run([sys.executable, "-m", "needles_tf.bin.make_nmnist", f"--output_dir={tmp_path}",
                         "--flagfile=flags/nmnist/o2i_19.1.cfg", "--num_shards=1", "--duplicates=1"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert records.read_metadata(tmp_path)["params"]["canvas_size"] == 64
    bad = subprocess.run([sys.executable, "-m", "needles_tf.bin.make_nmnist", f"--output_dir={tmp_path}/x",
                          "--mnist=idx:/no/such/dir"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "--mnist=idx:/no/such/dir: not a directory" in bad.stderr
