"""Gaussian-noise datasets for the memorisation experiment, generated on the fly.

Image i is N(0, 1) noise from a stateless generator keyed by (seed, i), its label a fixed random
bit of (seed, i): the same seed always gives the same images and labels, and nothing is stored.
"""

import tensorflow as tf


def _item(seed: int, height: int, width: int, channels: int):
    def make(index):
        key = tf.stack([tf.constant(seed, tf.int64), index])
        image = tf.random.stateless_normal((height, width, channels), seed=key)
        label = tf.random.stateless_uniform((), seed=key + [0, 1 << 40], maxval=2, dtype=tf.int32)
        return image, label

    return make


def make_noise_dataset(num_images: int, height: int, width: int, channels: int, batch_size: int,
                       seed: int = 0, training: bool = True) -> tf.data.Dataset:
    """Batches (noise float32 [B, H, W, C], labels int32 [B]) of `num_images` fixed images."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1; got {num_images}")
    data = tf.data.Dataset.range(num_images)
    if training:
        data = data.shuffle(num_images, seed=seed, reshuffle_each_iteration=True)
    data = data.map(_item(seed, height, width, channels), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)
