"""The four global poolings as running statistics over tiles, and their gradients tile by tile.

A tile contributes its exact embedding locations E [B, l, c] (flattened); `tile` turns them
into a state, `merge` combines two states, `result` gives the pooled [B, c] of all locations
seen, the same as the whole image's pooling:

  max        (maximum, how many locations reach it)
  mean       (sum, count)
  logsumexp  (maximum m, sum of exp(E - m))
  attention  (maximum score m, sum of w = exp(score - m), sum of w * E)

The backward pass needs, per tile, the gradient that the pooled vector P sends to the tile's
locations (and, for attention, to the scoring weights). `surrogate(E, final state, P)` is a
[B, c] function of the tile whose gradient at the current values equals the tile's share of
dP: a vector-Jacobian product with the loss's gradient g = dL/dP then needs one backward pass
of the tile alone (sum(g * surrogate)), and the tiles' shares add up to the whole image's.
Backend-agnostic (`keras.ops` only); every statistic in wide_dtype (float32 under mixed
precision), as the poolings themselves compute.
"""

from __future__ import annotations

import keras
from keras import ops

from needles_tf.models.pooling import AttentionPooling, LogSumExpPooling

State = tuple


class RunningMax:
    """Max pooling. Ties split the gradient equally, as TensorFlow's and JAX's max do."""

    def tile(self, e) -> State:
        top = ops.max(e, axis=1)
        return top, ops.sum(ops.cast(ops.equal(e, top[:, None]), e.dtype), axis=1)

    def merge(self, a: State, b: State) -> State:
        top = ops.maximum(a[0], b[0])
        zero = ops.zeros_like(a[1])
        return top, (ops.where(ops.equal(a[0], top), a[1], zero)
                     + ops.where(ops.equal(b[0], top), b[1], zero))

    def result(self, state: State):
        return state[0]

    def surrogate(self, e, state: State, pooled):
        share = ops.cast(ops.equal(e, state[0][:, None]), e.dtype) / state[1][:, None]
        return ops.sum(e * ops.stop_gradient(share), axis=1)


class RunningMean:
    """Mean pooling: every location's gradient is g / (number of locations)."""

    def tile(self, e) -> State:
        # the count per image, [B, 1]: every part of a state has the batch first
        return ops.sum(e, axis=1), ops.ones_like(e[:, 0, :1]) * ops.cast(ops.shape(e)[1], e.dtype)

    def merge(self, a: State, b: State) -> State:
        return a[0] + b[0], a[1] + b[1]

    def result(self, state: State):
        return state[0] / state[1]

    def surrogate(self, e, state: State, pooled):
        return ops.sum(e, axis=1) / ops.stop_gradient(state[1])


class RunningLogSumExp:
    """log(sum exp(E)): the gradient at a location is exp(E - P), a softmax over all of them."""

    def tile(self, e) -> State:
        top = ops.max(e, axis=1)
        return top, ops.sum(ops.exp(e - top[:, None]), axis=1)

    def merge(self, a: State, b: State) -> State:
        top = ops.maximum(a[0], b[0])
        return top, a[1] * ops.exp(a[0] - top) + b[1] * ops.exp(b[0] - top)

    def result(self, state: State):
        return state[0] + ops.log(state[1])

    def surrogate(self, e, state: State, pooled):
        return ops.sum(ops.exp(e - ops.stop_gradient(pooled)[:, None]), axis=1)


class RunningAttention:
    """Soft attention: P = sum_l w_l E_l / sum_l w_l with w_l = exp(score_l - m).

    With the final m, S = sum w and P held constant, sum_l w_l (E_l - P) / S has the gradient
    of P in both E and the scoring weights (d(w / S) = dw / S - w dS / S^2 summed over the
    locations gives exactly that), so a tile's share needs only the tile.
    """

    def __init__(self, layer: AttentionPooling):
        self.layer = layer

    def _scores(self, e):
        return ops.squeeze(self.layer.score(self.layer.hidden(e)), axis=-1)

    def tile(self, e) -> State:
        scores = self._scores(e)
        top = ops.max(scores, axis=1)
        weights = ops.exp(scores - top[:, None])
        return top, ops.sum(weights, axis=1), ops.einsum("bl,blc->bc", weights, e)

    def merge(self, a: State, b: State) -> State:
        top = ops.maximum(a[0], b[0])
        scale_a, scale_b = ops.exp(a[0] - top), ops.exp(b[0] - top)
        return (top, a[1] * scale_a + b[1] * scale_b,
                a[2] * scale_a[:, None] + b[2] * scale_b[:, None])

    def result(self, state: State):
        return state[2] / state[1][:, None]

    def surrogate(self, e, state: State, pooled):
        top, total = ops.stop_gradient(state[0]), ops.stop_gradient(state[1])
        weights = ops.exp(self._scores(e) - top[:, None]) / total[:, None]
        return ops.einsum("bl,blc->bc", weights, e - ops.stop_gradient(pooled)[:, None])


def running_pooling(layer: keras.layers.Layer):
    """The running statistics of a classifier's pooling layer (models/pooling.py's four).

    Raises:
      ValueError: another kind of layer.
    """
    if isinstance(layer, AttentionPooling):
        return RunningAttention(layer)
    kinds = ((keras.layers.GlobalMaxPooling2D, RunningMax),
             (keras.layers.GlobalAveragePooling2D, RunningMean),
             (LogSumExpPooling, RunningLogSumExp))
    for kind, running in kinds:
        if isinstance(layer, kind):
            return running()
    raise ValueError(f"pooling layer {layer.name!r} ({type(layer).__name__}) cannot be streamed: "
                     "not one of max, mean, logsumexp, attention")
