"""Instance normalisation: per image and channel, statistics over height and width."""

import keras
from keras import ops

from needles_tf.models.dtypes import wide_dtype


@keras.saving.register_keras_serializable(package="needles_tf")
class InstanceNormalization(keras.layers.Layer):
    """Normalises each channel of each image over H, W, then applies a learned scale and offset.

    Written by hand rather than `keras.layers.GroupNormalization(groups=-1)`, which measured
    about 1.8x slower on CPU. The variance is two-pass, mean((x - mean)^2): the
    one-pass E[x^2] - E[x]^2 loses the variance where the mean is large against the spread
    (mean 100x the standard deviation: 6.7e-3 off float64 instead of 5e-5), which made our
    float32 gradients 1.8x further from float64 than a textbook layer's. Normalisation and the
    affine part are then folded into one multiply-add, x * scale + (beta - mean * scale), so
    the activation tensor is read three times, as before (tests/test_models.py checks both
    against float64). Statistics are computed in float32 under mixed precision, where float16
    sums of squares would overflow. The gradient is written out (`_normalise`).
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        # read here, outside the custom gradient, which then sees tensors, not variables
        return _normalise(x, ops.copy(self.gamma), ops.copy(self.beta), self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _normalise(x, gamma, beta, epsilon: float):
    """Instance norm with its gradient written out rather than differentiated op by op.

    Automatic differentiation of the forward ops builds 97 graph ops per layer (broadcast-
    gradient chains of every [N, 1, 1, C] statistic): the 53 layers of a BagNet at RF 33 made
    88 % of its train function's 5,862 ops, and tracing them dominated the start of every run.
    Written out, a layer takes 42 ops (2,947 in all). With xhat = (x - mean) * r,
    r = rsqrt(var + eps) and, per image and channel, m1 = mean(dy) and m2 = mean(dy * xhat)
    over H, W: dx = gamma * r * (dy - m1 - xhat * m2), dgamma = sum(dy * xhat),
    dbeta = sum(dy). xhat is recomputed from x in the backward pass, so no float32 copy of a
    half-precision activation is kept. tests/test_numerics.py compares it with automatic
    differentiation.
    """
    wide = wide_dtype(x.dtype)

    @ops.custom_gradient
    def normalise(x, gamma, beta):
        wide_gamma, wide_beta = ops.cast(gamma, wide), ops.cast(beta, wide)
        wide_x = ops.cast(x, wide)
        mean = ops.mean(wide_x, axis=(1, 2), keepdims=True)
        inv_std = ops.rsqrt(ops.mean(ops.square(wide_x - mean), axis=(1, 2), keepdims=True)
                            + epsilon)
        scale = inv_std * wide_gamma
        offset = wide_beta - mean * scale
        y = x * ops.cast(scale, x.dtype) + ops.cast(offset, x.dtype)

        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass the output gradient alone
                (upstream,) = args
            dy = ops.cast(upstream, wide)
            xhat = (ops.cast(x, wide) - mean) * inv_std
            dy_xhat = dy * xhat
            m1 = ops.mean(dy, axis=(1, 2), keepdims=True)
            m2 = ops.mean(dy_xhat, axis=(1, 2), keepdims=True)
            dx = scale * (dy - m1 - xhat * m2)
            return (ops.cast(dx, x.dtype), ops.cast(ops.sum(dy_xhat, axis=(0, 1, 2)), gamma.dtype),
                    ops.cast(ops.sum(dy, axis=(0, 1, 2)), beta.dtype))

        return y, grad

    return normalise(x, gamma, beta)
