"""Classifier assembly: BagNet encoder -> global pooling -> linear logits."""

from typing import Sequence

import keras
from keras import layers, ops

from needles_tf.models.bagnet import (
    STAGE_BLOCKS,
    bagnet_encoder,
    check_k3,
    min_input_size,
    resolve_k3,
)
from needles_tf.models.dtypes import wide_dtype
from needles_tf.models.pooling import global_pooling


@keras.saving.register_keras_serializable(package="needles_tf")
class MinimumSize(keras.layers.Layer):
    """Passes images through, raising a clear error for ones smaller than the network allows."""

    def __init__(self, min_size: int, **kwargs):
        super().__init__(**kwargs)
        self.min_size = min_size

    def _check(self, shape):
        for axis, name in ((1, "height"), (2, "width")):
            size = shape[axis]
            if isinstance(size, int) and size < self.min_size:
                raise ValueError(
                    f"input {name} is {size} pixels; this network needs at least {self.min_size}"
                )

    def call(self, x):
        self._check(tuple(x.shape))
        return x

    def compute_output_shape(self, input_shape):
        self._check(tuple(input_shape))
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_size": self.min_size}


def build_classifier(
    channels: int,
    receptive_field: int | None = None,
    k3: Sequence[int] | None = None,
    width_scale: float = 1.0,
    pooling: str = "max",
    num_classes: int = 2,
    normalization: bool = True,
    blocks: Sequence[int] = STAGE_BLOCKS,
) -> keras.Model:
    """A BagNet classifier for images [B, H, W, channels] of any H, W, returning logits.

    Give either `receptive_field` (9, 33 or 177) or `k3`; with neither, RF 33 is used.
    `blocks`: bottleneck blocks per stage (default ResNet-50's 3, 4, 6, 3, the paper's).
    Layers named "embedding", "pooling" and "logits" give access to the parts.
    """
    if receptive_field is None and k3 is None:
        receptive_field = 33
    k3 = resolve_k3(receptive_field, k3)
    blocks = tuple(blocks)
    check_k3(k3, blocks)  # before any layer is built, as the pooling check
    pool = global_pooling(pooling)  # validates `pooling` before any layer is built
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer; got {channels!r}")

    inputs = keras.Input((None, None, channels), name="image")
    x = MinimumSize(min_input_size(k3), name="check_size")(inputs)
    embedding = bagnet_encoder(x, k3, width_scale, normalization, blocks)
    logits = layers.Dense(num_classes, name="logits", dtype=wide_dtype())(pool(embedding))
    depth = "" if blocks == STAGE_BLOCKS else f"b{''.join(map(str, blocks))}_"
    name = f"bagnet_{depth}k{''.join(map(str, k3))}_s{width_scale:g}_{pooling}"
    return keras.Model(inputs, logits, name=name)


def build_evidence_model(classifier: keras.Model) -> keras.Model:
    """Adds the per-location evidence map: the (linear) classifier applied at every location.

    Outputs {"logits": [B, classes], "evidence_map": [B, h, w, classes]}. For mean pooling the
    mean of the evidence map equals the logits; for the others it shows where evidence lies.
    """
    embedding = classifier.get_layer("embedding").output
    head = classifier.get_layer("logits")
    evidence = head(ops.cast(embedding, head.compute_dtype))
    return keras.Model(classifier.input, {"logits": classifier.output, "evidence_map": evidence},
                       name=f"{classifier.name}_evidence")


def classifier_k3(model: keras.Model) -> tuple[int, ...]:
    """The 3x3-block tuple of a classifier built by `build_classifier` (saved or not; any
    depth).

    Raises:
        ValueError: the model has no BagNet blocks.
    """
    names = {layer.name for layer in model.layers}
    k3 = []
    for stage in range(1, len(STAGE_BLOCKS) + 1):
        kernels = []
        while f"stage{stage}_block{len(kernels) + 1}_conv2" in names:
            kernels.append(model.get_layer(f"stage{stage}_block{len(kernels) + 1}_conv2")
                           .kernel_size[0])
        if not kernels:
            raise ValueError(f"model {model.name!r} is not a BagNet classifier "
                             "(needles_tf.models.build_classifier)")
        k3.append(kernels.count(3))
    return tuple(k3)


def min_image_size(model: keras.Model) -> int:
    """Smallest height / width a BagNet classifier accepts (ValueError for other models)."""
    return min_input_size(classifier_k3(model))


def check_binary(model: keras.Model) -> None:
    """Raises ValueError unless the model outputs two logits (no needle / needle)."""
    classes = model.output_shape[-1]
    if classes != 2:
        raise ValueError(f"model {model.name!r} has {classes} outputs; needle probabilities need 2")


def needle_probability(logits):
    """Softmax probability of class 1 (needle present) from logits [..., 2]."""
    return ops.softmax(ops.cast(logits, "float32"), axis=-1)[..., 1]
