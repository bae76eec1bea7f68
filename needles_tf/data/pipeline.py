"""tf.data input pipeline over a schema-v1 dataset directory: `make_dataset`, `dataset_info`.

read shards (parallel interleave, each record tagged with its global index)
  -> optional selection (train_size / class_balance, by index)
  -> parse + parallel PNG decode (uint8) -> cache when it fits -> shuffle / class balancing
  -> batch -> float32 in [0, 1] -> prefetch(AUTOTUNE)

Selection. `train_size` N takes, per class, the first round(b * N) positives and the first
N - round(b * N) negatives of a permutation fixed by `seed` (b = `class_balance`, or the split's
own positive fraction), so a smaller training set is a subset of a larger one for the same seed.
With `class_balance` set (and not 0.5, which the selection already balances), training epochs
draw each image from the positive or negative stream with probability 1/2 (each stream
reshuffled and repeated), so the minority class is oversampled and batches are balanced in
expectation, while an epoch keeps N images (paper, appendix C.1: the data set size stays
constant, only the balance changes).

Order. Every training epoch is shuffled by stateless permutations keyed by an epoch seed: drawn
from `seed` anew on each pass, or with `epochs=(first, last)` computed from (seed, epoch), so a
run resumed at epoch k sees exactly the epochs an uninterrupted run would.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from needles_tf.data import records

AUTOTUNE = tf.data.AUTOTUNE
CACHE_FRACTION = 0.25     # cache="auto" caches when the data take <= 25 % of physical memory
SHUFFLE_BYTES = 1 << 29   # uncached shuffle buffers are capped at 512 MiB


def dataset_info(data_dir: str, split: str = "train") -> dict[str, Any]:
    """Image size, counts and kind of one split, from dataset.json."""
    meta = records.read_metadata(data_dir)
    info = records.split_metadata(meta, split, data_dir)
    return {"height": meta["image"]["height"], "width": meta["image"]["width"],
            "channels": meta["image"]["channels"], "count": info["count"],
            "positives": info["positives"], "negatives": info["negatives"],
            "kind": meta["kind"]}


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_labels(paths: list[str]) -> np.ndarray:
    """Labels of every record in shard order (a light parse that skips the pixels)."""
    spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(paths, num_parallel_reads=None).batch(4096)
    ds = ds.map(lambda s: tf.io.parse_example(s, spec)["label"])
    return np.concatenate([b.numpy() for b in ds] or [np.zeros(0, np.int64)])


def select_indices(labels: np.ndarray, size: int | None, balance: float | None,
                   seed: int) -> np.ndarray:
    """Nested, seed-fixed selection of `size` record indices with a positive fraction `balance`."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    size = len(labels) if size is None else size
    if not 0 < size <= len(labels):
        raise ValueError(f"train_size must be in [1, {len(labels)}] (the split's size), got {size}")
    fraction = len(pos) / len(labels) if balance is None else balance
    num_pos = int(round(fraction * size))
    num_neg = size - num_pos
    if num_pos > len(pos) or num_neg > len(neg):
        raise ValueError(
            f"train_size={size} with class_balance={fraction:g} needs {num_pos} positives and "
            f"{num_neg} negatives, the split has {len(pos)} and {len(neg)}; lower train_size or "
            "generate more images (needles-make-nmnist --train_duplicates)")
    rng = np.random.default_rng([seed, 0x5E1EC7])
    return np.sort(np.concatenate([rng.permutation(pos)[:num_pos],
                                   rng.permutation(neg)[:num_neg]]))


def stateless_shuffle(ds: tf.data.Dataset, buffer_size: int, seed) -> tf.data.Dataset:
    """Shuffles `ds` in consecutive chunks of buffer_size elements, each chunk's permutation a
    function of (seed, chunk index) alone (seed: int64 tensor [2]); one chunk when
    buffer_size >= the dataset's size, i.e. a full shuffle."""
    def permute(index, chunk):
        count = tf.shape(tf.nest.flatten(chunk)[0])[0]
        key = tf.stack([seed[0] * 1_000_003 + seed[1], index])
        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=key)
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda t: tf.gather(t, order), chunk))

    return ds.batch(buffer_size).enumerate().flat_map(permute)


def make_dataset(data_dir: str, split: str, batch_size: int, training: bool, *,
                 train_size: int | None = None, class_balance: float | None = None,
                 seed: int = 0, cache: str | bool = "auto", deterministic: bool = False,
                 drop_remainder: bool = False, verify: bool = True,
                 epochs: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Batches (image float32 [B, H, W, C] in [0, 1], label int32 [B]) of one split.

    training: shuffle every epoch (and oversample with class_balance); one pass is one epoch.
    cache: "auto" (in memory when the decoded images fit in 25 % of RAM, else the encoded
    records when those fit, else none), "memory"/True, "none"/False.
    deterministic: fixed element order for a seed (slower); evaluation always reads in file
    order.
    verify: check the shards' sha256 against dataset.json first (clear error naming the file).
    epochs: (first, last) makes a training dataset of the epochs first .. last - 1 back to
    back, each epoch's order a function of (seed, epoch) alone, so a run resumed at epoch k
    sees exactly what an uninterrupted one would (the cache is filled once).
    """
    if class_balance is not None and not 0.0 < class_balance < 1.0:
        raise ValueError(f"class_balance must be in (0, 1), got {class_balance}")
    meta = records.read_metadata(data_dir)
    info = records.split_metadata(meta, split, data_dir)
    if verify:
        paths = records.verify_shards(data_dir, split, meta)
    else:
        paths = [os.path.join(data_dir, s["file"]) for s in info["shards"]]
    counts = [s["count"] for s in info["shards"]]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    ordered = deterministic or not training

    if training:  # records tagged with their global index, read from several shards at once
        files = tf.data.Dataset.from_tensor_slices((paths, offsets))
        ds = files.interleave(
            lambda path, offset: tf.data.TFRecordDataset(path).enumerate(offset),
            cycle_length=min(len(paths), 8), num_parallel_calls=AUTOTUNE, deterministic=ordered)
    else:  # evaluation keeps file order, so outputs line up with the records
        ds = tf.data.TFRecordDataset(paths, buffer_size=1 << 23).enumerate()

    selected = info["count"]
    if train_size is not None or class_balance is not None:
        keep = np.zeros(info["count"], bool)
        chosen = select_indices(_read_labels(paths), train_size, class_balance, seed)
        keep[chosen] = True
        selected = len(chosen)
        keep_t = tf.constant(keep)
        ds = ds.filter(lambda index, _: tf.gather(keep_t, index))

    channels = meta["image"]["channels"]
    shape = (meta["image"]["height"], meta["image"]["width"], channels)

    def parse(index, serialized):
        parsed = records.parse_example(serialized)
        return parsed["image/encoded"], tf.cast(parsed["label"], tf.int32)

    def decode(encoded, label):
        image = tf.io.decode_png(encoded, channels=channels)
        image.set_shape(shape)
        return image, label

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    decoded_bytes = selected * int(np.prod([d or 0 for d in shape]))
    encoded_bytes = sum(os.path.getsize(p) for p in paths) * selected // max(info["count"], 1)
    budget = CACHE_FRACTION * _physical_memory()
    if cache == "auto":
        cache_at = ("decoded" if 0 < decoded_bytes <= budget
                    else "encoded" if encoded_bytes <= budget else None)
    elif cache in (True, "memory"):
        cache_at = "decoded" if decoded_bytes else "encoded"
    elif cache in (False, None, "none"):
        cache_at = None
    else:
        raise ValueError(f"cache must be 'auto', 'memory' or 'none', got {cache!r}")

    if cache_at == "encoded":
        ds = ds.cache()
    if cache_at == "decoded" or not training:
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=ordered)
        if cache_at == "decoded":
            ds = ds.cache()
        image_bytes = max(decoded_bytes // max(selected, 1), 1)
        shuffle_buffer = selected if cache_at == "decoded" else SHUFFLE_BYTES // image_bytes
        decoded = True
    else:  # shuffle the small encoded records, decode afterwards
        record_bytes = max(encoded_bytes // max(selected, 1), 1)
        shuffle_buffer = selected if cache_at == "encoded" else SHUFFLE_BYTES // record_bytes
        decoded = False

    batches = selected // batch_size if drop_remainder else -(-selected // batch_size)
    if training:
        shuffle_buffer = max(1, min(selected, shuffle_buffer))
        # a 50:50 selection needs no oversampling to give balanced batches
        oversample = class_balance is not None and class_balance != 0.5

        def one_epoch(epoch_seed):
            """One epoch's images, batched, in an order that is a function of the int64
            scalar epoch_seed alone."""
            if oversample:  # each pass over a class stream and each coin keyed by the seed
                streams = [tf.data.Dataset.range(1 << 62).flat_map(
                    lambda r, c=c: stateless_shuffle(
                        ds.filter(lambda _, label: tf.equal(label, c)), shuffle_buffer,
                        tf.stack([epoch_seed, 2 * r + c]))) for c in (0, 1)]
                coins = tf.data.Dataset.range(selected).map(
                    lambda i: tf.cast(tf.random.stateless_uniform(
                        [], seed=tf.stack([epoch_seed, -1 - i])) < 0.5, tf.int64))
                epoch = tf.data.Dataset.choose_from_datasets(streams, coins)
            else:
                epoch = stateless_shuffle(ds, shuffle_buffer, tf.stack([epoch_seed, -1]))
            if not decoded:
                epoch = epoch.map(decode, num_parallel_calls=AUTOTUNE, deterministic=ordered)
            return epoch.batch(batch_size, drop_remainder=drop_remainder)

        if epochs is None:  # one pass per epoch; each pass draws a new epoch seed from `seed`
            epoch_seeds = tf.data.Dataset.random(
                seed=seed, rerandomize_each_iteration=True).take(1)
        else:  # the epochs [first, last) back to back, each seed a function of (seed, epoch)
            first, last = epochs
            epoch_seeds = tf.data.Dataset.range(first, last).map(
                lambda e: e + seed * 1_000_003)
            batches *= max(last - first, 0)
        ds = epoch_seeds.flat_map(one_epoch)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))  # known length
    ds = ds.map(lambda image, label: (tf.cast(image, tf.float32) / 255.0, label),
                num_parallel_calls=AUTOTUNE, deterministic=ordered)
    options = tf.data.Options()
    options.deterministic = ordered
    return ds.with_options(options).prefetch(AUTOTUNE)
