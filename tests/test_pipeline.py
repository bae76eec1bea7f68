"""Input pipeline: batches, nested train_size, class_balance oversampling, determinism, noise."""

import hashlib
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from needles_tf.data import metadata, schema
from needles_tf.generation import nmnist
from needles_tf.input import dataset_info, make_dataset
from needles_tf.input.noise import NoiseSpec, make_noise_dataset
from needles_tf.input.order import select_indices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nmnist"))
    nmnist.generate_nmnist(out, canvas_size=32, num_clutter=1, num_shards=4, progress=False)
    return out


def epoch(ds):
    """(image hashes, labels) of one pass."""
    hashes, labels = [], []
    for images, y in ds:
        hashes += [hashlib.sha1(im.tobytes()).hexdigest() for im in images.numpy()]
        labels += list(y.numpy())
    return hashes, np.array(labels)


def test_batches_and_info(data_dir):
    info = dataset_info(data_dir, "train")
    assert info == {"height": 32, "width": 32, "channels": 1, "count": 700, "positives": 350,
                    "negatives": 350, "kind": "nmnist"}
    ds = make_dataset(data_dir, "train", 64, training=True)
    assert ds.element_spec[0].shape.as_list() == [None, 32, 32, 1]
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    images, labels = next(iter(ds))
    assert images.shape == (64, 32, 32, 1) and 0.0 <= images.numpy().min()
    assert images.numpy().max() == 1.0
    hashes, labels = epoch(ds)
    assert len(hashes) == 700 and labels.sum() == 350  # finite: one pass = one epoch


def test_evaluation_is_in_file_order_and_matches_records(data_dir):
    hashes, labels = epoch(make_dataset(data_dir, "val", 32, training=False, cache="none"))
    paths = metadata.verify_shards(data_dir, "val")
    expected = []
    for serialized in tf.data.TFRecordDataset(paths):
        p = schema.Decoder().decode(serialized)
        image = tf.cast(tf.io.decode_png(p["image/encoded"]), tf.float32) / 255.0
        expected.append(hashlib.sha1(image.numpy().tobytes()).hexdigest())
    assert hashes == expected and list(labels[:4]) == [1, 0, 1, 0]
    assert epoch(make_dataset(data_dir, "val", 32, training=False, cache="memory"))[0] == expected


def test_train_size_subsets_are_nested(data_dir):
    sizes = [50, 200, 700]
    sets = [set(epoch(make_dataset(data_dir, "train", 50, True, train_size=n, seed=3))[0])
            for n in sizes]
    assert [len(s) for s in sets] == sizes
    assert sets[0] < sets[1] < sets[2]
    labels = np.tile([1, 0], 350)
    small, large = (select_indices(labels, n, None, seed=3) for n in (100, 300))
    assert set(small) < set(large) and labels[small].sum() == 50
    assert set(select_indices(labels, 100, None, seed=4)) != set(small)


def test_class_balance_oversamples_the_minority(data_dir):
    ds = make_dataset(data_dir, "train", 100, True, train_size=200, class_balance=0.1, seed=1)
    seen, labels = {}, []
    for _ in range(5):
        hashes, y = epoch(ds)
        assert len(y) == 200  # the data set size stays train_size
        seen.update(zip(hashes, y))
        labels.append(y)
        counts = Counter(hashes)
        # within an epoch each class stream is a reshuffled pass: ~100 negatives drawn from 180
        # come once each, the 20 positives come about 5 times each, all of them
        assert max(counts[h] for h, label in zip(hashes, y) if label == 0) == 1
        assert len({h for h, label in zip(hashes, y) if label == 1}) == 20
    labels = np.concatenate(labels)
    # 20 positive and 180 negative images, drawn 50:50 (sd of the mean over 1000 ~ 0.016).
    assert abs(labels.mean() - 0.5) < 0.08
    unique = np.array(list(seen.values()))
    assert (unique == 1).sum() == 20 and 150 < (unique == 0).sum() <= 180
    with pytest.raises(ValueError, match="needs 630 positives.*has 350"):
        make_dataset(data_dir, "train", 8, True, train_size=700, class_balance=0.9)
    with pytest.raises(ValueError, match="class_balance must be in \\(0, 1\\)"):
        make_dataset(data_dir, "train", 8, True, class_balance=1.0)


@pytest.mark.parametrize("cache", ["memory", "encoded", "none"])
def test_every_cache_gives_every_image_once_per_epoch_in_a_seeded_order(data_dir, cache):
    ds = make_dataset(data_dir, "train", 64, True, cache=cache, seed=5, epochs=(0, 2))
    hashes, labels = epoch(ds)
    first, second = hashes[:700], hashes[700:]
    assert len(hashes) == 1400 and sorted(first) == sorted(second) and first != second
    assert len(set(first)) == 700 and labels.sum() == 700
    # the second epoch alone (a resumed run) is the same as the second epoch of the pair
    resumed = make_dataset(data_dir, "train", 64, True, cache=cache, seed=5, epochs=(1, 2))
    if cache != "none":  # cached orders are a function of record indices only
        assert epoch(resumed)[0] == second
        reference = epoch(make_dataset(data_dir, "train", 64, True, cache="memory", seed=5,
                                       epochs=(0, 2)))[0]
        assert hashes == reference  # decoded and encoded caches: the same order


@pytest.mark.parametrize("cache, training", [("memory", True), ("none", True),
                                             ("none", False)])
def test_as_bytes_gives_the_stored_uint8_whose_tiles_convert_to_the_float_batches(
        data_dir, cache, training):
    """Tile streaming keeps the bytes until a tile is cut (models/streaming.as_pixels)."""
    from needles_tf.models.streaming import as_pixels

    def first(as_bytes):
        return next(iter(make_dataset(data_dir, "train", 16, training, cache=cache, seed=3,
                                      deterministic=True, as_bytes=as_bytes)))

    (raw, raw_labels), (floats, labels) = first(True), first(False)
    assert raw.dtype == tf.uint8 and floats.dtype == tf.float32
    np.testing.assert_array_equal(raw_labels, labels)
    np.testing.assert_array_equal(as_pixels(raw[:, 3:20, 5:17]), floats[:, 3:20, 5:17])
    assert as_pixels(floats) is floats


def test_input_pipelines_split_each_global_batch(data_dir):
    parts = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        ds = make_dataset(data_dir, "train", 64, True, seed=5, epochs=(0, 1),
                          input_context=context)
        parts.append(epoch(ds)[0])
    whole = epoch(make_dataset(data_dir, "train", 64, True, seed=5, epochs=(0, 1)))[0]
    merged = [h for b in range(len(whole) // 64) for part in parts
              for h in part[32 * b:32 * (b + 1)]]
    assert merged == whole[:len(merged)] and len(merged) == 640  # 10 full global batches


def test_deterministic_mode_repeats_exactly(data_dir):
    def run(seed):
        ds = make_dataset(data_dir, "train", 32, True, seed=seed, deterministic=True,
                          class_balance=0.5, train_size=300)
        return [epoch(ds)[0] for _ in range(2)]

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first[0] != first[1]  # reshuffled every epoch
    assert first[0] != other[0]


def test_corrupt_shard_is_named(data_dir, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(data_dir, copy)
    with open(f"{copy}/val-00000-of-00002.tfrecord", "r+b") as f:
        f.seek(50)
        f.write(b"\0\0\0")
    with pytest.raises(metadata.DatasetError, match="val-00000-of-00002.tfrecord: corrupt shard"):
        make_dataset(copy, "val", 8, False)
    with pytest.raises(metadata.DatasetError, match="no split 'holdout'"):
        make_dataset(copy, "holdout", 8, False)


def test_noise_is_deterministic_per_seed():
    def pairs(seed, training):
        out = {}
        spec = NoiseSpec(8, 8, 1, 40)
        for images, labels in make_noise_dataset(spec, "train", 16, training, seed=seed):
            out.update({im.tobytes(): int(y) for im, y in zip(images.numpy(), labels.numpy())})
        return out

    a, b = pairs(7, training=False), pairs(7, training=True)
    assert a == b and len(a) == 40  # same image-label pairs, whatever the order
    assert pairs(8, False).keys().isdisjoint(a.keys())
    values = np.frombuffer(b"".join(a.keys()), np.float32)
    assert abs(values.mean()) < 0.1 and abs(values.std() - 1.0) < 0.1
    assert 5 < sum(a.values()) < 35
