"""A BagNet classifier run tile by tile: the whole image's logits, evidence and gradients, with
the memory of one tile (after StreamingCNN, Pinckaers et al. 2020, made simpler by the bounded
receptive field: one margin per tile instead of per-layer bookkeeping).

Forward: each tile's exact embedding locations (models/tiles.py) become running pooling
statistics (models/streamed_pooling.py), merged tile by tile; the pooled vector goes through
the linear head. Backward: a second sweep recomputes each tile and back-propagates
`surrogate`, whose gradient is the tile's share of the whole image's (training/streamed.py
drives it under TensorFlow; benches/bench_streaming.py under JAX). Instance normalisation is
global per image and is refused, never approximated.

Backend-agnostic Keras (`keras.ops` only). A window is the 8 integers (row start, row stop,
first exact row, end of exact rows, then the same for columns; exact locations counted in the
tile's own embedding): plain ints in a Python loop, or scalar tensors inside a compiled loop.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import keras
import numpy as np
from keras import ops

from needles_tf.models.classifier import classifier_k3
from needles_tf.models.dtypes import wide_dtype
from needles_tf.models.normalization import InstanceNormalization
from needles_tf.models.pooling import flatten_locations
from needles_tf.models.streamed_pooling import running_pooling
from needles_tf.models.tiles import Tile, TileAccumulator, TileGeometry

Window = Sequence  # 8 ints or scalar tensors


class StreamingError(ValueError):
    """A classifier or tile size that cannot be streamed; the message says what to use."""


def check_streamable(classifier: keras.Model) -> None:
    """Raises StreamingError for a classifier with instance normalisation (global per image)."""
    if any(isinstance(layer, InstanceNormalization) for layer in classifier.layers):
        raise StreamingError(
            f"model {classifier.name!r} uses instance normalisation, which is global per image: "
            "tiles cannot reproduce it exactly; train without it (--nonormalization) to stream, "
            "or keep whole images (--remat=block for less memory)")


def as_pixels(tile: Any) -> Any:
    """A tile (a backend tensor) of uint8 images as float32 in [0, 1], what the whole-image
    pipeline gives (input pipelines that keep the bytes until a tile is cut: make_dataset's
    `as_bytes`); other tiles as they are."""
    if keras.backend.standardize_dtype(tile.dtype) != "uint8":
        return tile
    return ops.cast(tile, "float32") / 255.0


def window(tile: Tile) -> tuple[int, ...]:
    """The 8 integers of `tile` that `StreamedClassifier` reads (module docstring)."""
    return (tile.rows.start, tile.rows.stop, *tile.rows.valid,
            tile.cols.start, tile.cols.stop, *tile.cols.valid)


class StreamedClassifier:
    """The parts of a BagNet classifier (models/classifier.py) that streaming runs separately.

    Args:
      classifier: a classifier of `build_classifier` with `normalization=False`.
      tile_size: the largest tile side in input pixels (at least the geometry's minimum).

    Raises:
      StreamingError: instance normalisation, or a tile too small for the receptive field.
    """

    def __init__(self, classifier: keras.Model, tile_size: int):
        check_streamable(classifier)
        self.classifier = classifier
        self.geometry = TileGeometry(classifier_k3(classifier))
        if tile_size < self.geometry.min_tile_size:
            raise StreamingError(
                f"tile size {tile_size} is too small for receptive field "
                f"{2 * self.geometry.radius + 1}: give --tile_size of at least "
                f"{self.geometry.min_tile_size}")
        self.tile_size = tile_size
        self.encoder = keras.Model(classifier.inputs[0], classifier.get_layer("embedding").output,
                                   name=f"{classifier.name}_encoder")
        self.pooling = running_pooling(classifier.get_layer("pooling"))
        self.head = classifier.get_layer("logits")
        self.dtype = wide_dtype(classifier.get_layer("pooling").compute_dtype)

    @staticmethod
    def any_tile_size(classifier: keras.Model) -> int:
        """A tile size this classifier accepts, for code that cuts its own tiles."""
        return TileGeometry(classifier_k3(classifier)).min_tile_size

    def tiles(self, height: int, width: int) -> list[Tile]:
        """The tiles of a height x width image."""
        return self.geometry.tiles(height, width, self.tile_size)

    def windows(self, height: int, width: int) -> np.ndarray:
        """int32 [tiles, 8]: every tile's window, for a compiled loop over them."""
        return np.array([window(t) for t in self.tiles(height, width)], np.int32)

    def embedding(self, images, win: Window, training: bool = False):
        """The exact embedding locations of one tile, [B, rows, cols, c] in the wide dtype."""
        r0, r1, rv0, rv1, c0, c1, cv0, cv1 = win
        embedding = self.encoder(as_pixels(images[:, r0:r1, c0:c1]), training=training)
        return ops.cast(embedding[:, rv0:rv1, cv0:cv1], self.dtype)

    def state(self, images, win: Window, training: bool = False):
        """The running pooling statistics of one tile."""
        return self.tile_state(self.embedding(images, win, training))

    def tile_state(self, embedding, locations=None):
        """The running pooling statistics of a tile's exact embedding [B, rows, cols, c].

        Args:
          locations: int32 [n] flat (row-major) indices of the locations to pool, n >= 1; the
            others are left out of the pooling, as if the image had none there (whole-slide
            prediction pools its tissue only). None: all of them.
        """
        flat = flatten_locations(embedding)
        return self.pooling.tile(flat if locations is None
                                 else ops.take(flat, locations, axis=1))

    def merge(self, a, b):
        """The statistics of two sets of locations (tiles, or tiles merged already) together."""
        return self.pooling.merge(a, b)

    def pooled(self, state):
        """The pooled vector [B, c] of the merged statistics of all tiles."""
        return self.pooling.result(state)

    def logits(self, pooled):
        """The classifier's logits [B, classes] of a pooled vector [B, c] (its linear head)."""
        return self.head(pooled)

    def surrogate(self, images, win: Window, state, pooled, upstream, training: bool = True):
        """A scalar whose gradient (in the encoder's and the pooling's weights) is this tile's
        share of the gradient of sum(upstream * pooled); `state` and `pooled` are the whole
        image's, from the forward sweep."""
        e = flatten_locations(self.embedding(images, win, training))
        return ops.sum(ops.stop_gradient(upstream) * self.pooling.surrogate(e, state, pooled))

    def __call__(self, images, progress: Callable[[Iterable], Iterable] | None = None):
        """Logits [B, classes] of images [B, H, W, C] whose H, W are known, tile by tile."""
        return self.evidence(images, progress, with_map=False)[0]

    def evidence(self, images, progress: Callable[[Iterable], Iterable] | None = None,
                 with_map: bool = True):
        """(logits [B, classes], evidence map [B, h, w, classes] as NumPy, or None).

        The evidence map is the linear head at every embedding location, assembled from the
        tiles' exact locations: equal to `build_evidence_model`'s on the whole image.
        `progress` wraps the tiles' iterable (a tqdm bar, say).
        """
        height, width = int(images.shape[1]), int(images.shape[2])
        tiles = self.tiles(height, width)
        done = TileAccumulator(self.merge, (tiles[-1].rows.last, tiles[-1].cols.last), axis=1)
        for tile in (progress(tiles) if progress else tiles):
            embedding = self.embedding(images, window(tile))
            done.add(tile, self.tile_state(embedding),
                     ops.convert_to_numpy(self.head(embedding)) if with_map else None)
        state, evidence = done.result()
        return self.logits(self.pooled(state)), evidence
