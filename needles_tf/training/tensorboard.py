"""TensorBoard extras beyond Keras' callback: a few input images with their labels."""

from __future__ import annotations

import os

import tensorflow as tf


def log_input_images(log_dir: str, dataset: tf.data.Dataset) -> None:
    """Writes the first batch of (images, labels) of `dataset` under log_dir/train."""
    images, labels = next(iter(dataset))
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
    with writer.as_default():
        tf.summary.image("inputs", images, step=0, max_outputs=len(labels),
                         description="labels: " + " ".join(map(str, labels.numpy().tolist())))
    writer.close()
