"""Data: MNIST sources, nMNIST / nCAMELYON composition, TFRecords and tf.data pipelines."""
