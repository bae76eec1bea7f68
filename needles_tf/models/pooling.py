"""Global pooling of a topological embedding [B, h, w, c] -> [B, c] (paper, appendix B.1).

All poolings run in at least float32 (dtypes.wide_dtype), also under a mixed-precision policy:
their reductions over thousands of locations are where float16 loses most.
"""

import keras
from keras import ops

from needles_tf.models.dtypes import wide_dtype

POOLINGS = ("max", "mean", "logsumexp", "attention")


def flatten_locations(x):
    """[B, h, w, c] -> [B, h*w, c]."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], -1, shape[-1]))


@keras.saving.register_keras_serializable(package="needles_tf")
class LogSumExpPooling(keras.layers.Layer):
    """log(sum over locations of exp(E)): a smooth maximum whose gradient reaches every location."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", wide_dtype())
        super().__init__(**kwargs)

    def call(self, x):
        # keras.ops.logsumexp subtracts the maximum first, so large activations stay finite.
        return ops.logsumexp(flatten_locations(x), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="needles_tf")
class AttentionPooling(keras.layers.Layer):
    """Soft attention (Ilse et al. 2018): a = softmax_locations(w^T tanh(V E)), E_I = sum a E."""

    def __init__(self, hidden_units: int = 128, **kwargs):
        kwargs.setdefault("dtype", wide_dtype())
        super().__init__(**kwargs)
        self.hidden_units = hidden_units
        self.hidden = keras.layers.Dense(hidden_units, activation="tanh", name="attention_hidden",
                                         dtype=self.dtype_policy)
        self.score = keras.layers.Dense(1, name="attention_score", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.hidden.build((None, None, input_shape[-1]))
        self.score.build((None, None, self.hidden_units))

    def attention_weights(self, x):
        """[B, h, w, c] -> [B, h*w] weights that sum to one per image."""
        scores = self.score(self.hidden(flatten_locations(x)))
        return ops.softmax(ops.squeeze(scores, axis=-1), axis=-1)

    def call(self, x):
        weights = self.attention_weights(x)
        return ops.einsum("bl,blc->bc", weights, flatten_locations(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units}


def global_pooling(name: str) -> keras.layers.Layer:
    """The pooling layer called `name` (one of POOLINGS), named "pooling", in wide_dtype()."""
    if name == "max":
        return keras.layers.GlobalMaxPooling2D(name="pooling", dtype=wide_dtype())
    if name == "mean":
        return keras.layers.GlobalAveragePooling2D(name="pooling", dtype=wide_dtype())
    if name == "logsumexp":
        return LogSumExpPooling(name="pooling")
    if name == "attention":
        return AttentionPooling(name="pooling")
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {name!r}")
