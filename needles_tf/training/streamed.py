"""Streamed forward and backward passes under TensorFlow: any image size, one tile's memory.

models/streaming.py holds the backend-agnostic parts (tiles, running pooling statistics, the
per-tile surrogate whose gradient is the tile's share); this drives them in compiled loops.
Both sweeps are `tf.while_loop`s over a table of tile windows with `parallel_iterations=1`:
the default (10) lets TensorFlow run several tiles' encoders at once, and memory would be
several tiles'. The gradient is taken inside the loop's body, one tile at a time, and summed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from needles_tf.models.streaming import StreamedClassifier


def _windows(streamed: StreamedClassifier, images: tf.Tensor) -> tf.Tensor:
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("streamed training needs images of one known size per dataset "
                         f"(got a batch of shape {images.shape})")
    return tf.constant(streamed.windows(int(height), int(width)))


def _over_tiles(windows: tf.Tensor, start: int, body: Callable, initial):
    """Runs body(window, carried) -> carried for the tiles start .. end, one at a time."""
    def step(i, carried):
        return i + 1, body(tf.unstack(windows[i]), carried)

    _, carried = tf.while_loop(lambda i, _: i < tf.shape(windows)[0], step,
                               (tf.constant(start), initial), parallel_iterations=1)
    return carried


def streamed_state(streamed: StreamedClassifier, images: tf.Tensor, windows: tf.Tensor):
    """The merged pooling statistics of all tiles of `images` (no gradient kept)."""
    first = streamed.state(images, tf.unstack(windows[0]))
    return _over_tiles(windows, 1, lambda win, state: streamed.merge(
        state, streamed.state(images, win)), first)


def streamed_logits(streamed: StreamedClassifier, images: tf.Tensor) -> tf.Tensor:
    """Logits [B, classes] of `images` [B, H, W, C] (H, W known), the whole image's."""
    state = streamed_state(streamed, images, _windows(streamed, images))
    return streamed.logits(streamed.pooled(state))


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
    windows = _windows(streamed, images)
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

    sums = _over_tiles(windows, 0, tile_grads,
                       [tf.zeros(v.shape, v.dtype) for v in body_vars])
    body_iter, head_iter = iter(sums), iter(head_grads)
    return [next(head_iter) if in_head else next(body_iter) for in_head in is_head], logits
