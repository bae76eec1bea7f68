"""Data: MNIST sources, nMNIST / nCAMELYON composition, TFRecords and tf.data pipelines."""

from needles_tf.data.pipeline import dataset_info, make_dataset

__all__ = ["dataset_info", "make_dataset"]
