"""Instance normalisation: per image and channel, statistics over height and width."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="needles_tf")
class InstanceNormalization(keras.layers.Layer):
    """Normalises each channel of each image over H, W, then applies a learned scale and offset.

    Written by hand rather than `keras.layers.GroupNormalization(groups=-1)`, which measured
    about 1.8x slower on CPU (design.md). Statistics come from one pass (E[x^2] - E[x]^2) and the
    normalisation and affine part are folded into a single multiply-add, so the layer touches the
    activation tensor three times instead of five; on 2 CPU cores this was the fastest variant we
    measured (see benches/bench_model.py). Statistics are computed in float32 under mixed
    precision, where float16 sums of squares would overflow.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        stats_input = ops.cast(x, "float32")
        mean = ops.mean(stats_input, axis=(1, 2), keepdims=True)
        mean_sq = ops.mean(ops.square(stats_input), axis=(1, 2), keepdims=True)
        variance = ops.maximum(mean_sq - ops.square(mean), 0.0)
        scale = ops.rsqrt(variance + self.epsilon) * ops.cast(self.gamma, "float32")
        offset = ops.cast(self.beta, "float32") - mean * scale
        return x * ops.cast(scale, x.dtype) + ops.cast(offset, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
