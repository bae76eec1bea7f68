"""tf.data input pipelines over needles_tf TFRecords.

Evaluation splits: parallel interleave over shards, parallel PNG decode, batch, prefetch.
Training split: a fixed subset chosen by a seed-fixed permutation (so a smaller `train_size` is a
subset of a larger one), optionally with a chosen share of positives (`class_balance`, paper
appendix C.1: the set's size stays, its balance changes), cached in memory when it fits,
reshuffled every epoch, and with `class_balance` the minority class oversampled so that batches
are balanced in expectation. One pass over the returned dataset is one epoch of the subset's size.
"""

import os

import numpy as np
import tensorflow as tf

from needles_tf.data import records

AUTOTUNE = tf.data.AUTOTUNE
CACHE_BUDGET_BYTES = 2 << 30  # decoded uint8 images kept in memory up to this size


def dataset_info(data_dir: str | os.PathLike, split: str = "train") -> dict:
    """Image size, channel count and class counts of a split, from its dataset.json."""
    metadata = records.read_metadata(data_dir)
    if split not in metadata["splits"]:
        raise records.RecordsError(f"{data_dir}: dataset has no split {split!r}")
    counts = metadata["splits"][split]
    image = metadata.get("image", {})
    return {"kind": metadata["kind"], "height": image.get("height"), "width": image.get("width"),
            "channels": image.get("channels"), "count": counts["count"],
            "positives": counts["positives"], "negatives": counts["negatives"]}


def select_training_subset(labels: np.ndarray, train_size: int | None, class_balance: float | None,
                           seed: int) -> np.ndarray:
    """Sorted indices of the training subset; nested in `train_size` for a fixed seed/balance."""
    count = len(labels)
    train_size = count if train_size is None else train_size
    if not 0 < train_size <= count:
        raise ValueError(f"train_size must be between 1 and the split's {count} images; "
                         f"got {train_size}")
    order = np.random.default_rng(seed).permutation(count)
    if class_balance is None:
        return np.sort(order[:train_size])
    if not 0 < class_balance < 1:
        raise ValueError(f"class_balance must lie in (0, 1); got {class_balance}")
    n_pos = min(max(1, round(train_size * class_balance)), train_size - 1)
    positives, negatives = order[labels[order] == 1], order[labels[order] == 0]
    if n_pos > len(positives) or train_size - n_pos > len(negatives):
        raise ValueError(f"train_size {train_size} at class_balance {class_balance} needs {n_pos} "
                         f"positives and {train_size - n_pos} negatives; the split has "
                         f"{len(positives)} and {len(negatives)}")
    return np.sort(np.concatenate([positives[:n_pos], negatives[:train_size - n_pos]]))


def _decode(parsed: dict, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.io.decode_png(parsed["image/encoded"], channels=channels)
    return image, tf.cast(parsed["label"], tf.int32)


def _to_float(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(image, tf.float32) / 255.0, label


def make_dataset(data_dir: str | os.PathLike, split: str, batch_size: int, training: bool, *,
                 train_size: int | None = None, class_balance: float | None = None,
                 seed: int = 0, cache: str | bool = "auto", deterministic: bool = False,
                 drop_remainder: bool = False, verify: bool = True) -> tf.data.Dataset:
    """Batches (images float32 [B, H, W, C] in [0, 1], labels int32 [B]) of one split."""
    metadata = records.read_metadata(data_dir)
    paths = records.shard_paths(data_dir, split, verify=verify)
    channels = int(metadata.get("image", {}).get("channels") or 0)
    info = metadata["splits"][split]
    labels = np.array([int(c) for shard in info["shards"] for c in shard["labels"]], np.int64)

    if not training:
        files = tf.data.Dataset.from_tensor_slices(paths)
        data = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), 8),
                                num_parallel_calls=AUTOTUNE, deterministic=True)
        data = data.map(records.parse_example, num_parallel_calls=AUTOTUNE)
        data = data.map(lambda p: _decode(p, channels), num_parallel_calls=AUTOTUNE)
        data = data.map(_to_float, num_parallel_calls=AUTOTUNE)
        return data.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)

    subset = select_training_subset(labels, train_size, class_balance, seed)
    keep = np.zeros(len(labels), bool)
    keep[subset] = True
    # Shards in order, so that the running index is the item index the subset refers to.
    data = tf.data.TFRecordDataset(paths, num_parallel_reads=None)
    if len(subset) < len(labels):
        keep_table = tf.constant(keep)
        data = data.enumerate().filter(lambda i, _: tf.gather(keep_table, i)).map(lambda _, s: s)
    data = data.map(records.parse_example, num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    data = data.map(lambda p: _decode(p, channels), num_parallel_calls=AUTOTUNE, deterministic=True)
    height, width = metadata.get("image", {}).get("height"), metadata.get("image", {}).get("width")
    if cache == "auto":
        cache = bool(height and width) and len(subset) * height * width * channels <= CACHE_BUDGET_BYTES
    if cache:
        data = data.cache()

    size = len(subset)
    if class_balance is not None:
        by_class = [data.filter(lambda _, y, c=c: tf.equal(y, c)) for c in (1, 0)]
        by_class = [d.shuffle(min(size, 10_000), seed=seed + c).repeat()
                    for c, d in enumerate(by_class)]
        data = tf.data.Dataset.sample_from_datasets(by_class, weights=[0.5, 0.5], seed=seed,
                                                    stop_on_empty_dataset=False).take(size)
    else:
        data = data.shuffle(min(size, 10_000), seed=seed, reshuffle_each_iteration=True)
    data = data.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=deterministic or None)
    options = tf.data.Options()
    options.deterministic = deterministic
    data = data.with_options(options)
    return data.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
