"""Gaussian-noise data of the memorisation experiment, generated on the fly, never stored.

Image i is N(0, 1) noise from a stateless generator keyed by (seed, i) and its label is entry i of
a label vector fixed by the seed, so every epoch (and every run with that seed) sees the same
image-label pairs, in whatever order shuffling visits them.
"""

from __future__ import annotations

import tensorflow as tf

_LABEL_STREAM = 0x1AB31  # separates the label generator from the image generators


def make_noise_dataset(num_images: int, height: int, width: int, channels: int,
                       batch_size: int, seed: int, training: bool) -> tf.data.Dataset:
    """Batches (image float32 [B, H, W, C] ~ N(0, 1), label int32 [B] in {0, 1})."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    labels = tf.random.stateless_uniform([num_images], seed=[seed, _LABEL_STREAM], minval=0,
                                         maxval=2, dtype=tf.int32)

    def make(index):
        image = tf.random.stateless_normal(
            [height, width, channels], seed=tf.stack([tf.cast(seed, tf.int64), index]))
        return image, tf.gather(labels, index)

    ds = tf.data.Dataset.range(num_images)
    if training:
        ds = ds.shuffle(num_images, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
