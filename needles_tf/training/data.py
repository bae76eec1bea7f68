"""Where a run's images come from: a dataset directory (--data_dir) or Gaussian noise (--noise).

The trainer asks these functions for split sizes, training batches and evaluation batches, so the
memorisation experiment trains and reports exactly as an nMNIST run does.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from needles_tf.data import metadata
from needles_tf.evaluation.evaluate import evaluate, predict_probabilities
from needles_tf.evaluation.metrics import classification_metrics
from needles_tf.input import dataset_info, make_dataset
from needles_tf.input.noise import NoiseSpec, make_noise_dataset
from needles_tf.training.config import TrainConfig


def split_info(config: TrainConfig, split: str = "train") -> dict[str, Any]:
    """Image size, count, positives and negatives of a split (input.dataset_info's keys)."""
    if config.noise:
        return NoiseSpec.parse(config.noise).info(split, config.seed)
    return dataset_info(config.data_dir, split)


def describe(config: TrainConfig) -> dict[str, Any]:
    """What the run trained on, for summary.json (the report reads the O2I ratio from here):
    kind, image size, training images, and a dataset's generation parameters."""
    info = split_info(config, "train")
    described = {key: info[key] for key in ("kind", "height", "width", "channels")}
    described["train_images"] = info["count"]
    if config.noise:
        return {**described, "params": {"noise": config.noise}}
    return {**described, "params": metadata.read_metadata(config.data_dir).get("params", {})}


def training_batches(config: TrainConfig, epochs: tuple[int, int],
                     input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """One pipeline's shares of the global batches of epochs first .. last - 1."""
    if config.noise:
        return make_noise_dataset(NoiseSpec.parse(config.noise), "train", config.batch_size,
                                  training=True, seed=config.seed, epochs=epochs,
                                  input_context=input_context)
    return make_dataset(config.data_dir, "train", config.batch_size, training=True,
                        train_size=config.train_size, class_balance=config.class_balance,
                        seed=config.seed, cache=config.cache, deterministic=config.deterministic,
                        epochs=epochs, input_context=input_context,
                        as_bytes=bool(config.tile_size))  # streamed: converted tile by tile


def evaluation_batches(config: TrainConfig, split: str, batch_size: int,
                       cache: str = "auto", verify: bool = True) -> tf.data.Dataset:
    """A split in file (index) order, e.g. for validation after every epoch."""
    if config.noise:
        return make_noise_dataset(NoiseSpec.parse(config.noise), split, batch_size,
                                  training=False, seed=config.seed)
    return make_dataset(config.data_dir, split, batch_size, training=False, cache=cache,
                        verify=verify, as_bytes=bool(config.tile_size))


def evaluate_split(model: keras.Model, config: TrainConfig, split: str,
                   batch_size: int) -> dict[str, Any]:
    """Metrics of `model` on a split (evaluation.evaluate's, for noise too)."""
    if config.noise:
        labels, probs = predict_probabilities(
            model, evaluation_batches(config, split, batch_size), config.tile_size)
        return {"noise": config.noise, "split": split,
                **classification_metrics(labels, probs)}
    return evaluate(model, config.data_dir, split, batch_size, config.tile_size)
