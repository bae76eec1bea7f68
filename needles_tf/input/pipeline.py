"""tf.data input over a schema-v1 dataset directory: `make_dataset`, `dataset_info`.

    records (interleaved shards, each record tagged with its global index)
      -> selection by index (train_size / class_balance, order.select_indices)
      -> schema.Decoder -> Parser
      training, cached:   IndexedCache (decoded pixels, or PNGs when those do not fit)
                          -> batches of positions in the epoch's order (order.py) -> gather
      training, uncached: chunked stateless shuffle of the stream -> decode -> batch
      evaluation:         decode in file order -> batch
      -> float32 in [0, 1] -> prefetch(AUTOTUNE)

An epoch's order is a function of (seed, epoch) and record indices alone, so a resumed run sees
what an uninterrupted one would, and several input pipelines (multi-worker training, through an
`input_context`) split each global batch of the same order between them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from needles_tf.data import metadata, schema
from needles_tf.input import order
from needles_tf.input.cache import IndexedCache
from needles_tf.input.parser import KEYS, Parser

AUTOTUNE = tf.data.AUTOTUNE
CACHE_FRACTION = 0.25     # cache="auto" caches when the data take <= 25 % of usable memory
SHUFFLE_BYTES = 1 << 29   # uncached shuffle buffers are capped at 512 MiB
CACHES = ("auto", "memory", "encoded", "none")


def dataset_info(data_dir: str, split: str = "train") -> dict[str, Any]:
    """Image size, counts and kind of one split, from dataset.json.

    Raises:
        metadata.DatasetError: no dataset there, or no such split.
    """
    meta = metadata.read_metadata(data_dir)
    info = metadata.split_metadata(meta, split, data_dir)
    return {"height": meta["image"]["height"], "width": meta["image"]["width"],
            "channels": meta["image"]["channels"], "count": info["count"],
            "positives": info["positives"], "negatives": info["negatives"],
            "kind": meta["kind"]}


def _check_image_size(paths: list[str], image: dict) -> None:
    """The first record's stored size must be the one in dataset.json: a mismatch would
    otherwise surface as a shape error deep inside training or evaluation."""
    if not paths or not image.get("height"):
        return
    keys = (schema.HEIGHT, schema.WIDTH, schema.CHANNELS)
    for serialized in tf.data.TFRecordDataset(paths[0]).take(1):
        decoded = schema.Decoder(keys).decode(serialized)
        found = tuple(int(decoded[key]) for key in keys)
        expected = (image["height"], image["width"], image["channels"])
        if found != expected:
            raise metadata.DatasetError(
                f"{paths[0]}: holds {found[0]} x {found[1]} x {found[2]} images, but "
                f"{metadata.METADATA_FILE} says {expected[0]} x {expected[1]} x {expected[2]}; "
                "the two do not belong together: re-run the generator with --overwrite")


def usable_memory() -> int:
    """Physical memory, or the container's (cgroup v2 or v1) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def _read_labels(paths: list[str]) -> np.ndarray:
    """Labels of every record in shard order (a light parse that skips the pixels)."""
    decoder = schema.Decoder((schema.LABEL,))
    ds = tf.data.TFRecordDataset(paths).batch(4096)
    ds = ds.map(lambda s: decoder.decode_batch(s)[schema.LABEL])
    return np.concatenate([b.numpy() for b in ds] or [np.zeros(0, np.int64)])


def _cache_kind(cache: str | bool, decoded_bytes: int, encoded_bytes: int) -> str | None:
    """"decoded", "encoded" or None: what the training split is cached as."""
    budget = CACHE_FRACTION * usable_memory()
    if cache == "auto":
        return ("decoded" if 0 < decoded_bytes <= budget
                else "encoded" if encoded_bytes <= budget else None)
    if cache in (True, "memory"):
        return "decoded" if decoded_bytes else "encoded"
    if cache == "encoded":
        return "encoded"
    if cache in (False, None, "none"):
        return None
    raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")


def make_dataset(data_dir: str, split: str, batch_size: int, training: bool, *,
                 train_size: int | None = None, class_balance: float | None = None,
                 seed: int = 0, cache: str | bool = "auto", deterministic: bool = False,
                 drop_remainder: bool = False, verify: bool = True,
                 epochs: tuple[int, int] | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 as_bytes: bool = False) -> tf.data.Dataset:
    """Batches (image float32 [B, H, W, C] in [0, 1], or uint8 with `as_bytes`; label int32
    [B]) of one split.

    Args:
        data_dir: a dataset directory (dataset.json and shards).
        split: "train", "val" or "test".
        batch_size: images per batch; with `input_context`, the global batch.
        training: shuffle every epoch (and oversample with class_balance); one pass is one
            epoch. Evaluation reads in file order.
        train_size, class_balance: the selection (order.select_indices); class_balance other
            than 0.5 also oversamples the minority class.
        seed: selection and order seed.
        cache: how a training split is held: "auto" (decoded in memory when the images fit in
            25 % of usable memory, else the PNGs when those fit, else streamed from the files),
            "memory"/True (decoded; PNGs for images of varying size), "encoded" (PNGs),
            "none"/False (streamed, shuffled in chunks of 512 MiB). Evaluation caches alike, in
            file order, from its second pass on.
        deterministic: fixed element order for a seed also where it costs speed.
        drop_remainder: drop a last, smaller batch.
        verify: check the shards' sha256 against dataset.json first.
        epochs: (first, last) makes a training dataset of the epochs first .. last - 1 back to
            back, each epoch's order a function of (seed, epoch) alone; without it each pass
            draws a new order from `seed`.
        input_context: this pipeline's part of a distributed input. Training: each element is
            one replica's share of a global batch (batch_size / replicas images, by position),
            this pipeline's replicas in turn; a cached split keeps the last, partial batch
            (shares smaller or empty), a streamed one leaves it out. Evaluation: each batch is
            split between the pipelines by position.
        as_bytes: images as they are stored, uint8 in [0, 255]: a quarter of float32's
            memory in every batch and buffer, for consumers that convert a tile at a time
            (tile streaming: models/streaming.py).

    Returns:
        A dataset of known cardinality.

    Raises:
        metadata.DatasetError: missing / corrupt dataset files or no such split.
        ValueError: a bad argument.
    """
    if class_balance is not None and not 0.0 < class_balance < 1.0:
        raise ValueError(f"class_balance must be in (0, 1), got {class_balance}")
    meta = metadata.read_metadata(data_dir)
    info = metadata.split_metadata(meta, split, data_dir)
    if verify:
        paths = metadata.verify_shards(data_dir, split, meta)
    else:
        paths = [os.path.join(data_dir, s["file"]) for s in info["shards"]]
    image = meta["image"]
    if verify:
        _check_image_size(paths, image)
    parser = Parser(image["height"], image["width"], image["channels"])
    pipelines, pipeline_id, pipeline_batch, replicas = 1, 0, batch_size, 1
    if input_context is not None:
        pipelines, pipeline_id = (input_context.num_input_pipelines,
                                  input_context.input_pipeline_id)
        replicas = input_context.num_replicas_in_sync if training else pipelines
        if batch_size % replicas or replicas % pipelines:
            raise ValueError(f"batch_size {batch_size} must be divisible by the {replicas} "
                             f"replicas, and those by the {pipelines} input pipelines")
        pipeline_batch = batch_size // pipelines
    # this pipeline's replicas (training): global indices first .. first + local - 1
    local, share_of_replica = replicas // pipelines, batch_size // replicas
    ordered = deterministic or not training

    # (position, serialized): position = rank of the record among the selected ones
    records = _records(paths, info, training, ordered)
    selected = info["count"]
    if train_size is not None or class_balance is not None:
        chosen = order.select_indices(_read_labels(paths), train_size, class_balance, seed)
        rank = np.full(info["count"], -1, np.int64)
        rank[chosen] = np.arange(len(chosen))
        rank_t = tf.constant(rank)
        records = records.map(lambda index, serialized: (tf.gather(rank_t, index), serialized))
        records = records.filter(lambda position, _: position >= 0)
        selected = len(chosen)
    decoded_bytes = selected * int(np.prod([d or 0 for d in parser.shape]))
    encoded_bytes = sum(os.path.getsize(p) for p in paths) * selected // max(info["count"], 1)
    kind = _cache_kind(cache, decoded_bytes, encoded_bytes)
    share = selected
    if pipelines > 1 and not (training and kind):  # a streamed split is shared by position
        records = records.filter(lambda position, _: position % pipelines == pipeline_id)
        share = (selected - pipeline_id + pipelines - 1) // pipelines
    decoder = schema.Decoder(KEYS)
    records = records.map(lambda position, serialized: (position, *parser.parse_encoded(
        decoder.decode(serialized))), num_parallel_calls=AUTOTUNE, deterministic=ordered)

    if not training:  # file order; Dataset.cache suffices (no shuffle to copy it)
        ds = records.map(lambda _, encoded, label: (encoded, label))
        ds = ds.cache() if kind == "encoded" else ds
        ds = ds.map(lambda encoded, label: (parser.decode_image(encoded), label),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.cache() if kind == "decoded" else ds
        ds = ds.batch(pipeline_batch, drop_remainder=drop_remainder)
        batches = _batches(share, pipeline_batch, drop_remainder)
    else:
        oversample = class_balance is not None and class_balance != 0.5
        epoch_seeds, num_epochs = order.epoch_seeds(seed, epochs)
        if kind is None:
            records = records.map(lambda _, encoded, label: (encoded, label))
            buffer = max(1, min(share, SHUFFLE_BYTES * selected // max(encoded_bytes, 1)))
            per_epoch = _batches(share, pipeline_batch, drop_remainder)
            stream_batch = pipeline_batch
            if replicas > 1:  # shares differ by an image: all take whole shares, as many
                per_epoch, stream_batch = local * (selected // batch_size), share_of_replica
            ds = epoch_seeds.flat_map(lambda s: _streamed_epoch(
                records, parser, buffer, s, oversample, share, ordered).batch(
                    stream_batch, drop_remainder=drop_remainder or replicas > 1).take(per_epoch))
        else:
            record_bytes = ((decoded_bytes if kind == "decoded" else encoded_bytes)
                            // max(selected, 1))
            ds, per_epoch = _cached_epochs(records, parser, kind, selected, record_bytes,
                                           epoch_seeds, oversample, batch_size, drop_remainder,
                                           range(pipeline_id * local, (pipeline_id + 1) * local),
                                           share_of_replica)
        batches = per_epoch * num_epochs
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    options = tf.data.Options()
    options.deterministic = ordered
    if training and kind:  # gathering a batch takes microseconds: two ready batches and one
        # thread suffice, where autotuned buffers and threads (each with its own malloc arena)
        # added 0.5x the cache to the peak
        options.threading.private_threadpool_size = 1
        ds = ds if as_bytes else ds.map(_to_float)
        return ds.with_options(options).prefetch(2)
    if not as_bytes:
        ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    return ds.with_options(options).prefetch(AUTOTUNE)


def _to_float(image, label):
    """uint8 images -> float32 in [0, 1]."""
    return tf.cast(image, tf.float32) / 255.0, label


def _records(paths: list[str], info: dict, training: bool, ordered: bool) -> tf.data.Dataset:
    """(global record index, serialized record), from several shards at once when training."""
    if not training:  # evaluation keeps file order, so outputs line up with the records
        return tf.data.TFRecordDataset(paths, buffer_size=1 << 23).enumerate()
    counts = [s["count"] for s in info["shards"]]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    files = tf.data.Dataset.from_tensor_slices((paths, offsets))
    return files.interleave(
        lambda path, offset: tf.data.TFRecordDataset(path).enumerate(offset),
        cycle_length=min(len(paths), 8), num_parallel_calls=AUTOTUNE, deterministic=ordered)


def _batches(count: int, batch_size: int, drop_remainder: bool) -> int:
    return count // batch_size if drop_remainder else -(-count // batch_size)


def _cached_epochs(records, parser: Parser, kind: str, selected: int, record_bytes: int,
                   epoch_seeds: tf.data.Dataset, oversample: bool, batch_size: int,
                   drop_remainder: bool, replicas: range, share: int):
    """Epochs gathered from an IndexedCache; returns (dataset, batches per epoch). Under
    several replicas each element is one replica's share of a global batch
    (order.replica_shares)."""
    if kind == "decoded":
        values = records.map(
            lambda position, encoded, label: (position, parser.decode_image(encoded), label),
            num_parallel_calls=AUTOTUNE, deterministic=False)

        def decode(images):
            return images
    else:
        values = records

        def decode(encoded):
            return tf.map_fn(parser.decode_image, encoded,
                             fn_output_signature=tf.TensorSpec(parser.shape, tf.uint8))
    cache = IndexedCache(values, selected, decode, record_bytes)
    labels = cache.labels

    def epoch(seed):
        positions = (order.oversampled_order(labels, seed) if oversample
                     else order.shuffled_order(selected, seed))
        return order.replica_shares(positions, batch_size, drop_remainder, replicas, share)

    ds = epoch_seeds.flat_map(epoch).map(cache.gather)
    return ds, _batches(selected, batch_size, drop_remainder) * len(replicas)


def _streamed_epoch(records, parser: Parser, buffer: int, seed, oversample: bool,
                    selected: int, ordered: bool) -> tf.data.Dataset:
    """One epoch of an uncached split: the encoded stream shuffled in chunks, then decoded."""
    if oversample:  # each pass over a class stream keyed by (seed, 2 * pass + class)
        streams = [tf.data.Dataset.range(1 << 62).flat_map(
            lambda r, c=c: order.stateless_shuffle(
                records.filter(lambda _, label: tf.equal(label, c)), buffer,
                tf.stack([seed, 2 * r + c]))) for c in (0, 1)]
        coins = tf.random.stateless_uniform([selected], seed=tf.stack([seed, -1])) < 0.5
        epoch = tf.data.Dataset.choose_from_datasets(
            streams, tf.data.Dataset.from_tensor_slices(tf.cast(coins, tf.int64)))
    else:
        epoch = order.stateless_shuffle(records, buffer, tf.stack([seed, -1]))
    return epoch.map(lambda encoded, label: (parser.decode_image(encoded), label),
                     num_parallel_calls=AUTOTUNE, deterministic=ordered)
