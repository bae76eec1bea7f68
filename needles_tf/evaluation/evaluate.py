"""Needle probabilities and metrics of a Keras classifier on a dataset split."""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from needles_tf.evaluation.metrics import classification_metrics
from needles_tf.input import dataset_info, make_dataset
from needles_tf.models import check_binary, min_image_size, needle_probability
from needles_tf.models.streaming import StreamedClassifier, as_pixels
from needles_tf.serving.streamed import streamed_logits


def logits_function(model: keras.Model, images: tf.TensorSpec,
                    tile_size: int | None = None) -> Callable[[tf.Tensor], tf.Tensor]:
    """images -> logits of `model` for batches like `images`, whole or streamed in tiles of
    `tile_size` pixels (serving/streamed.py: the same logits with the memory of a tile).

    Built once and kept by whoever evaluates repeatedly (validation after every epoch): each
    new function is traced anew.
    """
    check_binary(model)
    if tile_size:
        streamed = StreamedClassifier(model, tile_size)
        return tf.function(lambda batch: streamed_logits(streamed, batch),
                           input_signature=[images])
    if images.dtype == tf.uint8:  # a pipeline's stored bytes (make_dataset's as_bytes)
        return tf.function(lambda batch: model(as_pixels(batch), training=False),
                           input_signature=[images])
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # One traced forward pass, outside the strategy's replicas: Keras' predict under
        # several replicas gathers its outputs across workers, so one worker evaluating alone
        # (the chief, validating) would wait for the others for ever.
        return tf.function(lambda batch: model(batch, training=False), input_signature=[images])
    return model.predict_on_batch  # reuses the model's compiled step


def predict_probabilities(model: keras.Model, dataset: tf.data.Dataset,
                          tile_size: int | None = None,
                          forward: Callable[[tf.Tensor], tf.Tensor] | None = None,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], needle probabilities float64 [N]) over (images, labels) batches.

    tile_size: stream each image in tiles of this many pixels; forward: a `logits_function`
    of the model built before (else one is built here).
    """
    check_binary(model)
    forward = forward or logits_function(model, dataset.element_spec[0], tile_size)
    labels, probs = [], []
    for images, batch_labels in dataset:
        logits = forward(images)
        probs.append(np.asarray(needle_probability(logits)))
        labels.append(batch_labels.numpy())
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(labels).astype(np.int64), np.concatenate(probs).astype(np.float64)


def evaluate(model: keras.Model, data_dir: str, split: str = "test",
             batch_size: int = 32, tile_size: int | None = None) -> dict[str, Any]:
    """Metrics (see `classification_metrics`) of `model` on one split of a dataset directory,
    each image whole or streamed in tiles of `tile_size` pixels.

    Raises ValueError (metadata.DatasetError for dataset problems) naming the dataset and the
    mismatch when its images do not fit the model.
    """
    info = dataset_info(data_dir, split)
    channels = model.input_shape[-1]
    if info["channels"] != channels:
        raise ValueError(f"{data_dir}: {split} images have {info['channels']} channel(s), the "
                         f"model takes {channels}; evaluate on a dataset like its training set")
    min_size = min_image_size(model)
    if min(info["height"], info["width"]) < min_size:
        raise ValueError(f"{data_dir}: images are {info['height']} x {info['width']} pixels, the "
                         f"model needs at least {min_size} x {min_size}")
    if info["count"] == 0:
        raise ValueError(f"{data_dir}: split {split!r} has no images")
    labels, probs = predict_probabilities(
        model, make_dataset(data_dir, split, batch_size, training=False,
                            as_bytes=bool(tile_size)), tile_size)
    return {"data_dir": data_dir, "split": split, **classification_metrics(labels, probs)}
