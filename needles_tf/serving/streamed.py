"""Streamed inference under TensorFlow: logits of images of any size with one tile's memory.

models/streaming.py holds the backend-agnostic parts (tiles, running pooling statistics);
this drives them in a compiled loop over a table of tile windows. The loop is a
`tf.while_loop` with `parallel_iterations=1`: the default (10) lets TensorFlow run several
tiles' encoders at once, and memory would be several tiles'. training/streamed.py adds the
backward sweep.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from needles_tf.models.streaming import StreamedClassifier


def tile_windows(streamed: StreamedClassifier, images: tf.Tensor) -> tf.Tensor:
    """int32 [tiles, 8]: the windows of `images`' tiles (their height and width known)."""
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("streaming needs images of one known size per dataset "
                         f"(got a batch of shape {images.shape})")
    return tf.constant(streamed.windows(int(height), int(width)))


def over_tiles(windows: tf.Tensor, start: int, body: Callable, initial):
    """Runs carried = body(window, carried) for tiles start .. end, one tile at a time."""
    def step(i, carried):
        return i + 1, body(tf.unstack(windows[i]), carried)

    _, carried = tf.while_loop(lambda i, _: i < tf.shape(windows)[0], step,
                               (tf.constant(start), initial), parallel_iterations=1)
    return carried


def streamed_state(streamed: StreamedClassifier, images: tf.Tensor, windows: tf.Tensor):
    """The merged pooling statistics of all tiles of `images`."""
    first = streamed.state(images, tf.unstack(windows[0]))
    return over_tiles(windows, 1, lambda win, state: streamed.merge(
        state, streamed.state(images, win)), first)


def streamed_logits(streamed: StreamedClassifier, images: tf.Tensor) -> tf.Tensor:
    """Logits [B, classes] of `images` [B, H, W, C], equal to the whole images'."""
    state = streamed_state(streamed, images, tile_windows(streamed, images))
    return streamed.logits(streamed.pooled(state))
