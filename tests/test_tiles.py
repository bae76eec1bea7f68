"""Tile geometry (models/tiles.py): spans cover the embedding once, tiles respect their size, and
the tiles' embeddings put side by side equal the whole image's."""

import keras
import numpy as np
import pytest

from needles_tf.models import bagnet, build_classifier
from needles_tf.models.tiles import TileGeometry


@pytest.mark.parametrize("rf", sorted(bagnet.RF_PRESETS))
@pytest.mark.parametrize("size", [3, 17, 64, 131, 500])
def test_spans_partition_the_embedding_and_respect_the_tile_size(rf, size):
    geometry = TileGeometry(bagnet.RF_PRESETS[rf])
    for tile_size in (geometry.min_tile_size, geometry.min_tile_size + 5, 256):
        spans = geometry.spans(size, tile_size)
        assert spans[0].first == 0 and spans[-1].last == bagnet.embedding_size(size)
        assert all(a.last == b.first for a, b in zip(spans, spans[1:]))
        for span in spans:
            assert span.first < span.last and span.size <= tile_size
            assert 0 <= span.start and span.stop <= size and span.start % 8 == 0
            # each exact location's receptive field lies inside the tile or crosses an image edge
            for i in (span.first, span.last - 1):
                centre = bagnet.EMBEDDING_OFFSET + bagnet.EMBEDDING_STRIDE * i
                assert span.start == 0 or centre - geometry.radius >= span.start
                assert span.stop == size or centre + geometry.radius < span.stop
            begin, end = span.valid
            assert 0 <= begin < end <= bagnet.embedding_size(span.size)


def test_a_tile_below_the_receptive_field_is_refused_with_the_minimum():
    geometry = TileGeometry(bagnet.RF_PRESETS[33])
    with pytest.raises(ValueError, match=f"at least {geometry.min_tile_size} pixels"):
        geometry.spans(100, geometry.min_tile_size - 1)
    assert geometry.min_tile_size > 33


@pytest.mark.parametrize("rf, blocks, tile_extra", [(9, (1, 1, 1, 1), 0), (33, (1, 1, 1, 1), 3),
                                                    (177, (3, 4, 6, 3), 1)])
def test_tiled_embedding_equals_the_whole_images(rf, blocks, tile_extra):
    """Odd image sizes, tiles that do not divide them, a tile just above the minimum."""
    model = build_classifier(1, receptive_field=rf, width_scale=1 / 16, normalization=False,
                             blocks=blocks)
    encoder = keras.Model(model.input, model.get_layer("embedding").output)
    geometry = TileGeometry(bagnet.RF_PRESETS[rf])
    height, width = (203, 197) if rf == 177 else (77, 61)
    images = np.random.default_rng(rf).random((2, height, width, 1), np.float32)
    whole = np.asarray(encoder(images))
    tiled = np.full_like(whole, np.nan)
    tiles = geometry.tiles(height, width, geometry.min_tile_size + tile_extra)
    assert len(tiles) > 1
    for tile in tiles:
        part = np.asarray(encoder(images[:, tile.rows.start:tile.rows.stop,
                                         tile.cols.start:tile.cols.stop]))
        (r0, r1), (c0, c1) = tile.rows.valid, tile.cols.valid
        tiled[:, tile.rows.first:tile.rows.last, tile.cols.first:tile.cols.last] = \
            part[:, r0:r1, c0:c1]
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
