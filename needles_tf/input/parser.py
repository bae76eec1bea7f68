"""Parser: decoded records (schema.Decoder's dicts) -> (image, label) for the model.

As in TF Model Garden, the decoder only turns bytes into tensors and the parser makes model
inputs of them. The paper's protocol uses no augmentation, so training and evaluation parse
alike (they differ in caching and order, in pipeline.py). PNG decoding is its own step
(`decode_image`) because a training split cached encoded is shuffled first and decoded after.
"""

from __future__ import annotations

import tensorflow as tf

from needles_tf.data import schema

KEYS = (schema.IMAGE, schema.LABEL)  # the features the parser needs (the decoder reads these)


class Parser:
    """Makes (image uint8 [H, W, C], label int32) of decoded records of one dataset."""

    def __init__(self, height: int | None, width: int | None, channels: int):
        self.shape = (height, width, channels)

    def decode_image(self, encoded: tf.Tensor) -> tf.Tensor:
        """PNG bytes -> uint8 [H, W, C] with the dataset's static shape."""
        image = tf.io.decode_png(encoded, channels=self.shape[2])
        image.set_shape(self.shape)
        return image

    def parse_encoded(self, decoded: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """(PNG bytes, label int32): what an encoded cache holds."""
        return decoded[schema.IMAGE], tf.cast(decoded[schema.LABEL], tf.int32)

    def parse(self, decoded: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """(image, label) for training and evaluation alike (no augmentation in the paper)."""
        encoded, label = self.parse_encoded(decoded)
        return self.decode_image(encoded), label
