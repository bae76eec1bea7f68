"""Tile geometry: cut an image into overlapping tiles whose embeddings, cropped, equal the whole's.

A BagNet without normalisation is local up to its global pooling: embedding location i (along
either axis) is centred on input pixel c_i = EMBEDDING_OFFSET + EMBEDDING_STRIDE * i and reads
only the pixels c_i - r .. c_i + r, r = (receptive field - 1) / 2 (zero padding counted as
pixels). A tile whose origin lies on the embedding stride sees the same strided grid as the whole
image, and every location whose receptive field lies inside the tile -- or crosses only edges
that are the image's own, where tile and image are padded alike -- comes out exactly as in the
whole image. So an axis is cut into spans of embedding locations, each read from a tile that
covers their receptive fields, and the spans' embeddings put side by side are the image's.

This one geometry serves streamed training, large-image prediction and whole-slide prediction
(design.md: "tile geometry is computed once"), and `TileAccumulator` is the one loop body they
share. Pure Python and NumPy: no Keras, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from needles_tf.models.bagnet import (
    EMBEDDING_OFFSET,
    EMBEDDING_STRIDE,
    embedding_size,
    receptive_field,
)


@dataclasses.dataclass(frozen=True)
class Span:
    """One tile along one axis.

    Attributes:
      start, stop: the input pixels the tile reads, start <= p < stop (start on the stride).
      first, last: the image's embedding locations it gives exactly, first <= i < last.
    """
    start: int
    stop: int
    first: int
    last: int

    @property
    def size(self) -> int:
        """Input pixels of the tile along this axis."""
        return self.stop - self.start

    @property
    def valid(self) -> tuple[int, int]:
        """(begin, end) of the exact locations in the tile's own embedding."""
        origin = self.start // EMBEDDING_STRIDE
        return self.first - origin, self.last - origin


@dataclasses.dataclass(frozen=True)
class Tile:
    """A rectangle of the image (rows x cols) and the embedding locations it gives exactly."""
    rows: Span
    cols: Span


class TileGeometry:
    """Where the tiles of a BagNet with 3x3-block tuple `k3` lie, for any image and tile size.

    Args:
      k3: 3x3 blocks per stage (models.bagnet); sets the receptive field and so the margins.

    Attributes:
      radius: pixels a location reads on each side of its centre, (receptive field - 1) / 2.
      margin: embedding locations a tile reads before its first exact one (left / top), so
        that the tile's origin stays on the stride.
    """

    def __init__(self, k3: Sequence[int]):
        self.k3 = tuple(k3)
        self.radius = (receptive_field(self.k3) - 1) // 2
        stride = EMBEDDING_STRIDE
        # origin 8 (i - margin) <= c_i - radius for every i
        self.margin = max(0, -(-(self.radius - EMBEDDING_OFFSET) // stride))
        # a tile whose first exact location is i needs pixels up to c_{i + n - 1} + radius:
        # `reach` is that end minus the tile's origin for n = 1, from an origin at the margin
        self._reach = stride * self.margin + EMBEDDING_OFFSET + self.radius + 1

    @property
    def min_tile_size(self) -> int:
        """The smallest tile that gives at least one exact location away from the image's
        edges: the receptive field, rounded up to the stride's grid."""
        return self._reach

    def spans(self, size: int, tile_size: int) -> list[Span]:
        """The tiles along an axis of `size` pixels, each at most `tile_size` pixels.

        Raises:
          ValueError: a tile too small for the receptive field, or an axis without locations.
        """
        if tile_size < self.min_tile_size:
            raise ValueError(
                f"tile size {tile_size} is too small for receptive field "
                f"{2 * self.radius + 1}: tiles need at least {self.min_tile_size} pixels")
        locations = embedding_size(size)
        if locations < 1:
            raise ValueError(f"an image side of {size} pixels gives no embedding location")
        stride, spans, first = EMBEDDING_STRIDE, [], 0
        while first < locations:
            start = max(0, stride * (first - self.margin))
            if size - start <= tile_size:  # the rest fits: this tile ends at the image's edge
                last, stop = locations, size
            else:  # the most locations whose receptive fields end inside the tile
                last = min(locations, (start + tile_size - self.radius - EMBEDDING_OFFSET - 1)
                           // stride + 1)
                stop = min(size, stride * (last - 1) + EMBEDDING_OFFSET + self.radius + 1)
            spans.append(Span(start, stop, first, last))
            first = last
        return spans

    def iter_tiles(self, height: int, width: int, tile_size: int) -> Iterator[Tile]:
        """Every tile of a height x width image, row by row, one at a time (a whole slide
        has many)."""
        cols = self.spans(width, tile_size)
        for rows in self.spans(height, tile_size):
            for col in cols:
                yield Tile(rows, col)

    def tiles(self, height: int, width: int, tile_size: int) -> list[Tile]:
        """Every tile of a height x width image, row by row."""
        return list(self.iter_tiles(height, width, tile_size))


class TileAccumulator:
    """What every tiled pass does with a tile's results: merge its running pooling statistics
    (models/streamed_pooling.py) into the image's, and place its exact locations' evidence into
    the image's evidence map. Backend-agnostic: states are whatever `merge` combines.

    Args:
      merge: combines two states, (a, b) -> state.
      locations: (rows, cols) of the image's embedding: the map's extent.
      evidence: the map to fill (a memory-mapped array, say); None: allocated as zeros at the
        first tile's evidence, of its dtype and its other axes.
      axis: the position of the rows axis in the map and in each tile's evidence (cols follow);
        1 where a batch axis comes first.
    """

    def __init__(self, merge: Callable[[Any, Any], Any], locations: tuple[int, int],
                 evidence: np.ndarray | None = None, axis: int = 0):
        self.merge, self.locations, self.evidence, self.axis = merge, locations, evidence, axis
        self.state: Any = None

    def add(self, tile: Tile, state: Any, evidence: np.ndarray | None = None) -> None:
        """Merges `tile`'s state; places `evidence` (its exact locations) where given."""
        self.state = state if self.state is None else self.merge(self.state, state)
        if evidence is None:
            return
        if self.evidence is None:
            shape = evidence.shape
            self.evidence = np.zeros((*shape[:self.axis], *self.locations,
                                      *shape[self.axis + 2:]), evidence.dtype)
        where = (slice(None),) * self.axis + (slice(tile.rows.first, tile.rows.last),
                                              slice(tile.cols.first, tile.cols.last))
        self.evidence[where] = evidence

    def result(self) -> tuple[Any, np.ndarray | None]:
        """(the merged state of every tile added, the evidence map or None)."""
        return self.state, self.evidence
