"""Images with where their needle is, for localisation: (image, label, object region), file order.

Training needs image labels only (pipeline.py); scoring where a classifier looks needs the
records' `object/mask` (nCAMELYON: the lesion's pixels) or else `object/bbox` (nMNIST: the
digit's 28 x 28 box).
"""

from __future__ import annotations

import tensorflow as tf

from needles_tf.data import metadata, schema
from needles_tf.input.parser import Parser

AUTOTUNE = tf.data.AUTOTUNE


def _region(decoded: dict, height: int, width: int) -> tf.Tensor:
    """bool [H, W]: the object's mask if the record has one, else its box, else nothing."""
    mask = decoded[schema.MASK]

    def from_mask():
        return tf.io.decode_png(mask, channels=1)[..., 0] > 0

    def from_box():
        box = tf.concat([decoded[schema.BBOX], tf.zeros(4, tf.int64)], 0)[:4]
        rows = tf.range(height, dtype=tf.int64)[:, None]
        cols = tf.range(width, dtype=tf.int64)[None, :]
        return (rows >= box[0]) & (rows < box[2]) & (cols >= box[1]) & (cols < box[3])

    region = tf.cond(tf.strings.length(mask) > 0, from_mask, from_box)
    region.set_shape((height, width))
    return region


def object_dataset(data_dir: str, split: str, batch_size: int) -> tf.data.Dataset:
    """Batches of (image float32 [B, H, W, C] in [0, 1], label int32 [B], region bool [B, H, W])
    of one split in file order (a known number of them); a negative image's region is empty.

    Raises:
        metadata.DatasetError: missing or corrupt dataset files, no such split, or images of
            varying size (localisation needs one size per dataset).
    """
    meta = metadata.read_metadata(data_dir)
    image = meta["image"]
    height, width = image["height"], image["width"]
    if not height or not width:
        raise metadata.DatasetError(f"{data_dir}: images of varying size; localisation scores "
                                    "need one image size per dataset")
    paths = metadata.verify_shards(data_dir, split, meta)
    parser = Parser(height, width, image["channels"])
    decoder = schema.Decoder((schema.IMAGE, schema.LABEL, schema.BBOX, schema.MASK))

    def parse(serialized):
        decoded = decoder.decode(serialized)
        pixels, label = parser.parse(decoded)
        return tf.cast(pixels, tf.float32) / 255.0, label, _region(decoded, height, width)

    count = metadata.split_metadata(meta, split, data_dir)["count"]
    ds = tf.data.TFRecordDataset(paths).apply(tf.data.experimental.assert_cardinality(count))
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)  # len() gives the batches
