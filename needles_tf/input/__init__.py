"""The tf.data input: decoding and parsing records into batches for training and evaluation."""

from needles_tf.input.pipeline import dataset_info, make_dataset

__all__ = ["dataset_info", "make_dataset"]
