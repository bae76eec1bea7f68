"""A JAX driver for a tile-streamed training step (benches/bench_streaming.py, on a GPU
without TensorFlow): what training/streamed.py does with tf.while_loops, as a Python loop
over the tiles with one jitted call per tile. Imports nothing of the package but models/.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable

import jax
import jax.numpy as jnp
import keras

from needles_tf.models.streaming import StreamedClassifier


class JaxStreamedStep:
    """The streamed gradients of a classifier under JAX: a Python loop over the tiles, one
    jitted call per tile, compiled once per tile shape (at most nine shapes per image).

    Forward: each tile's pooling statistics, merged. Then the head's gradient gives dL/dP for
    the pooled vector P. Backward: each tile's surrogate (models/streaming.py) differentiated
    in the encoder's and the pooling's weights, the tiles' shares summed. The weights enter
    as values through keras.StatelessScope, so the Keras layers run unchanged.
    """

    def __init__(self, streamed: StreamedClassifier, loss: Callable,
                 progress: Callable[[str], None] = lambda what: None):
        self.streamed, self.loss, self.progress = streamed, loss, progress
        head = {id(v) for v in streamed.head.trainable_variables}
        variables = streamed.classifier.trainable_variables
        self.is_head = [id(v) in head for v in variables]
        self.body = [v for v, h in zip(variables, self.is_head) if not h]
        self.head = [v for v, h in zip(variables, self.is_head) if h]
        self._state = jax.jit(self._tile_state, static_argnums=(3,))
        self._merge = jax.jit(streamed.merge)
        self._head = jax.jit(self._head_gradients)
        self._grads = jax.jit(self._tile_gradients, static_argnums=(7,), donate_argnums=(0,))
        self._compiled = {}  # ('state' or 'grads', tile window) -> compiled function

    @staticmethod
    def _scope(variables, values):
        return keras.StatelessScope(state_mapping=list(zip(variables, values)))

    @staticmethod
    def _cut(images, origin, local):
        """The tile at `origin` (row, column), its shape given by the local window."""
        return jax.lax.dynamic_slice(
            images, (0, origin[0], origin[1], 0),
            (images.shape[0], local[1], local[5], images.shape[3]))

    def _tile_state(self, body, images, origin, local):
        with self._scope(self.body, body):
            return self.streamed.state(self._cut(images, origin, local), local)

    def _head_gradients(self, head, state, labels):
        def objective(pooled, values):
            with self._scope(self.head, values):
                return self.loss(labels, self.streamed.logits(pooled))

        pooled = self.streamed.pooled(state)
        upstream, grads = jax.grad(objective, argnums=(0, 1))(pooled, head)
        return pooled, upstream, grads

    def _tile_gradients(self, sums, body, images, origin, state, pooled, upstream, local):
        def share(values):
            with self._scope(self.body, values):
                return self.streamed.surrogate(self._cut(images, origin, local), local, state,
                                               pooled, upstream)

        return [s + g for s, g in zip(sums, jax.grad(share)(body))]

    def _compile(self, body, images, labels, origin, windows) -> None:
        """Compiles both sweeps' functions for every new tile window: traced one after
        another, compiled together in threads (XLA's compiler releases Python's lock)."""
        new = [w for w in dict.fromkeys(windows) if ("state", w) not in self._compiled]
        if not new:
            return
        state = self._state.lower(body, images, origin, new[0]).out_info
        pooled, upstream, _ = self._head.lower([v.value for v in self.head], state,
                                               labels).out_info
        sums = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in self.body]
        lowered = {}
        for w in new:
            lowered["state", w] = self._state.lower(body, images, origin, w)
            lowered["grads", w] = self._grads.lower(sums, body, images, origin, state, pooled,
                                                    upstream, w)
        self.progress(f"{len(lowered)} tile functions traced")
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            self._compiled.update(zip(lowered, pool.map(lambda x: x.compile(),
                                                        lowered.values())))
        self.progress("compiled")

    def __call__(self, images, labels) -> list:
        """The gradients of the loss in the classifier's trainable variables, in order."""
        tiles = []  # (origin, window in the tile's own coordinates: static, hashable)
        for r0, r1, rv0, rv1, c0, c1, cv0, cv1 in self.streamed.windows(*images.shape[1:3]):
            tiles.append((jnp.array([r0, c0]),
                          tuple(map(int, (0, r1 - r0, rv0, rv1, 0, c1 - c0, cv0, cv1)))))
        body = [v.value for v in self.body]
        self._compile(body, images, labels, tiles[0][0], [w for _, w in tiles])
        state = None
        for origin, w in tiles:
            tile_state = self._compiled["state", w](body, images, origin)
            state = tile_state if state is None else self._merge(state, tile_state)
        pooled, upstream, head_grads = self._head([v.value for v in self.head], state, labels)
        sums = [jnp.zeros(v.shape, v.dtype) for v in self.body]
        for origin, w in tiles:
            sums = self._compiled["grads", w](sums, body, images, origin, state, pooled,
                                              upstream)
        body_iter, head_iter = iter(sums), iter(head_grads)
        return [next(head_iter) if h else next(body_iter) for h in self.is_head]
