"""Data: MNIST sources, nMNIST / nCAMELYON composition, TFRecords and tf.data pipelines.

`make_dataset` and `dataset_info` are imported lazily (they need TensorFlow), so generator worker
processes can import this package without it.
"""


def __getattr__(name):
    if name in ("make_dataset", "dataset_info"):
        from needles_tf.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'needles_tf.data' has no attribute {name!r}")


__all__ = ["make_dataset", "dataset_info"]
