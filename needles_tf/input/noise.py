"""Gaussian-noise data of the memorisation experiment, generated on the fly, never stored.

The paper's randomised control (after Zhang et al., 2017): can a BagNet fit images of isotropic
Gaussian noise with random labels as well as it fits nMNIST? Image i of a split is N(0, 1) noise
from a stateless generator keyed by (seed, split, i); its label is entry i of a label vector fixed
by (seed, split). So every epoch, every resume and every worker sees the same image-label pairs,
in the order (seed, epoch) gives, and val / test are other noise (accuracy there is chance).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import tensorflow as tf

from needles_tf.input import order

_LABEL_STREAM = 0x1AB31  # separates the label generators from the image generators
_SPLITS = {"train": 0, "val": 1, "test": 2}
EVAL_IMAGES = 512  # images of val and test (at most the training count)
_SPEC = re.compile(r"^(\d+)(?:x(\d+))?(?:x(\d+))?:(\d+)$")


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """Size and count of a noise dataset: `count` training images of height x width x channels."""

    height: int
    width: int
    channels: int
    count: int

    @classmethod
    def parse(cls, text: str) -> NoiseSpec:
        """'SIZE:COUNT' (square, one channel), 'HxW:COUNT' or 'HxWxC:COUNT', e.g. '64:11276'.

        Raises:
            ValueError: another form, or a zero size or count.
        """
        match = _SPEC.match(text.strip())
        if not match:
            raise ValueError(f"noise {text!r}: expected SIZE:COUNT, HxW:COUNT or HxWxC:COUNT, "
                             "e.g. 64:11276 (11276 training images of 64 x 64)")
        height, width, channels, count = match.groups()
        spec = cls(int(height), int(width or height), int(channels or 1), int(count))
        if min(spec.height, spec.width, spec.channels, spec.count) < 1:
            raise ValueError(f"noise {text!r}: sizes and count must be >= 1")
        return spec

    def split_count(self, split: str) -> int:
        if split not in _SPLITS:
            raise ValueError(f"noise data has the splits {sorted(_SPLITS)}, not {split!r}")
        return self.count if split == "train" else min(self.count, EVAL_IMAGES)

    def info(self, split: str, seed: int) -> dict[str, Any]:
        """The split's size and label counts, as input.dataset_info gives them for a dataset."""
        positives = int(tf.reduce_sum(_labels(self.split_count(split), seed, split)))
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "count": self.split_count(split), "positives": positives,
                "negatives": self.split_count(split) - positives, "kind": "noise"}


def _labels(count: int, seed: int, split: str) -> tf.Tensor:
    return tf.random.stateless_uniform([count], seed=[seed, _LABEL_STREAM + _SPLITS[split]],
                                       minval=0, maxval=2, dtype=tf.int32)


def make_noise_dataset(spec: NoiseSpec, split: str, batch_size: int, training: bool, *,
                       seed: int = 0, epochs: tuple[int, int] | None = None,
                       input_context: tf.distribute.InputContext | None = None
                       ) -> tf.data.Dataset:
    """Batches (image float32 [B, H, W, C] ~ N(0, 1), label int32 [B] in {0, 1}) of one split.

    Args and element layout as input.make_dataset: training shuffles every epoch (the order a
    function of (seed, epoch) when `epochs` = (first, last) is given, else of seed and pass);
    with `input_context` each element is one replica's share of a global batch of
    `batch_size`, this pipeline's replicas in turn (the last batch's shares smaller or empty).
    Evaluation reads in index order.
    """
    count = spec.split_count(split)
    labels = _labels(count, seed, split)
    stream = tf.constant(_SPLITS[split] << 40, tf.int64)
    shape = (spec.height, spec.width, spec.channels)

    def image(index):
        return tf.random.stateless_normal(shape, seed=tf.stack([tf.cast(seed, tf.int64),
                                                                 stream + index]))

    def images_of(indices):
        return (tf.map_fn(image, indices, fn_output_signature=tf.TensorSpec(shape, tf.float32)),
                tf.gather(labels, indices))

    if not training:
        ds = tf.data.Dataset.range(count).batch(batch_size)
        batches = -(-count // batch_size)
    else:
        replicas, pipelines, pipeline_id = 1, 1, 0
        if input_context is not None:
            replicas = input_context.num_replicas_in_sync
            pipelines, pipeline_id = (input_context.num_input_pipelines,
                                      input_context.input_pipeline_id)
        if batch_size % replicas:
            raise ValueError(f"batch_size {batch_size} must be divisible by the {replicas} "
                             "replicas")
        local, share = replicas // pipelines, batch_size // replicas
        mine = range(pipeline_id * local, (pipeline_id + 1) * local)
        seeds, num_epochs = order.epoch_seeds(seed, epochs)
        ds = seeds.flat_map(lambda s: order.replica_shares(
            order.shuffled_order(count, s), batch_size, False, mine, share))
        batches = -(-count // batch_size) * local * num_epochs
    ds = ds.map(images_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(tf.data.AUTOTUNE)
