"""The streamed backward pass under TensorFlow: gradients of any image size, one tile's memory.

The forward sweep (serving/streamed.py) merges the tiles' pooling statistics; the head's
gradient gives dL/dP for the pooled vector P; a second sweep recomputes each tile and
back-propagates the tile's surrogate (models/streaming.py), whose gradient is the tile's share,
inside the loop's body, one tile at a time, summing the shares.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from needles_tf.models.streaming import StreamedClassifier
from needles_tf.serving.streamed import over_tiles, streamed_state, tile_windows


def streamed_gradients(streamed: StreamedClassifier, images: tf.Tensor,
                       objective: Callable[[tf.Tensor], tf.Tensor],
                       variables: Sequence[tf.Variable]) -> tuple[list[tf.Tensor], tf.Tensor]:
    """(gradients of objective(logits) in `variables`, logits), as for the whole images.

    Args:
      streamed: the classifier's streamed parts.
      images: [B, H, W, C], H and W known when traced.
      objective: the scalar to differentiate, from the logits (the scaled loss).
      variables: the classifier's trainable variables (the encoder's, the pooling's, the
        head's), in the order the gradients are returned.
    """
    windows = tile_windows(streamed, images)
    state = tf.nest.map_structure(tf.stop_gradient, streamed_state(streamed, images, windows))
    pooled = streamed.pooled(state)
    head = list(streamed.head.trainable_variables)
    with tf.GradientTape() as tape:
        tape.watch(pooled)
        logits = streamed.logits(pooled)
        value = objective(logits)
    upstream, *head_grads = tape.gradient(value, [pooled, *head])
    is_head = [any(v is h for h in head) for v in variables]
    body_vars = [v for v, in_head in zip(variables, is_head) if not in_head]

    def tile_grads(win, sums):
        with tf.GradientTape() as tile_tape:
            share = streamed.surrogate(images, win, state, pooled, upstream)
        grads = tile_tape.gradient(share, body_vars,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [s + tf.cast(g, s.dtype) for s, g in zip(sums, grads)]

    sums = over_tiles(windows, 0, tile_grads,
                       [tf.zeros(v.shape, v.dtype) for v in body_vars])
    body_iter, head_iter = iter(sums), iter(head_grads)
    return [next(head_iter) if in_head else next(body_iter) for in_head in is_head], logits
