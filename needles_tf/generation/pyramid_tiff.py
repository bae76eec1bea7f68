"""Writing tiled pyramidal TIFFs that openslide, QuPath and ASAP open, in bounded memory.

One page per level, each half the previous one (2x2 mean, rounded; odd edges dropped), the
reduced pages marked as such (SubfileType 1), tiled and zlib-compressed: openslide's
"generic-tiff" format. With `mpp`, every page carries TIFF resolution tags in pixels per
centimetre, which openslide reports as `openslide.mpp-x` / `-y` and QuPath as the pixel size.

The source may be a memory-mapped array (np.memmap / np.load(mmap_mode="r")): pages are written
tile by tile, and each reduced level is computed strip by strip into a temporary memory-mapped
file beside the output, so memory stays at a few strips of tiles whatever the image's size.
Used by the synthetic slides (slides.py) and by slide prediction's heatmaps.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterator

import numpy as np

from needles_tf import atomic

STRIP_TILES = 4  # reduced levels are computed this many tiles high at a time


def _tiles(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The image's tiles in row-major order (edge tiles smaller; tifffile pads them)."""
    height, width = image.shape[:2]
    for y in range(0, height, tile):
        strip = np.asarray(image[y:y + tile])
        for x in range(0, width, tile):
            yield np.ascontiguousarray(strip[:, x:x + tile])


def halve(image: np.ndarray, out: np.ndarray, rows: int) -> None:
    """Writes the 2x2 mean (rounded to nearest) of `image` [H, W, C] uint8 into `out`
    [H // 2, W // 2, C], `rows` output rows at a time."""
    height, width = out.shape[:2]
    for y in range(0, height, rows):
        a = np.asarray(image[2 * y:2 * min(y + rows, height), :2 * width])
        total = a[0::2, 0::2].astype(np.uint16) + 2  # + 2: round to nearest
        for dy, dx in ((0, 1), (1, 0), (1, 1)):
            total += a[dy::2, dx::2]
        out[y:y + total.shape[0]] = (total >> 2).astype(np.uint8)


def level_count(height: int, width: int, tile_size: int) -> int:
    """Levels until the smallest fits in one tile (at least 1)."""
    count = 1
    while max(height, width) >> (count - 1) > tile_size and min(height, width) >> count >= 1:
        count += 1
    return count


def write_pyramidal_tiff(path: str, image: np.ndarray, *, levels: int | None = None,
                         tile_size: int = 256, mpp: float | None = None,
                         compression_level: int = 1, scratch: str | None = None) -> None:
    """Writes `image` (uint8 [H, W, 3], in memory or memory-mapped) as a pyramidal TIFF,
    atomically.

    Args:
      levels: pages to write (default: until the smallest fits in one tile).
      tile_size: tile height = width (a multiple of 16).
      mpp: microns per pixel of `image`; level k gets mpp * 2**k (None: no resolution tags).
      compression_level: zlib level (1: fast).
      scratch: folder for the reduced levels' temporary files (default: a temporary folder
        beside `path`).
    """
    import tifffile

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}")
    height, width = image.shape[:2]
    levels = levels or level_count(height, width, tile_size)
    if min(height, width) >> (levels - 1) < 1:
        raise ValueError(f"{height} x {width} pixels are too few for {levels} levels")
    folder = scratch or os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pyramid-") as levels_dir, \
            atomic.atomic_path(path) as tmp, \
            tifffile.TiffWriter(tmp, bigtiff=height * width * 4 > 2 ** 32) as tiff:
        level = image
        for k in range(levels):
            if k:
                reduced = np.lib.format.open_memmap(
                    os.path.join(levels_dir, f"level{k}.npy"), mode="w+", dtype=np.uint8,
                    shape=(level.shape[0] // 2, level.shape[1] // 2, 3))
                halve(level, reduced, STRIP_TILES * tile_size)
                level = reduced
            resolution = {} if mpp is None else {
                "resolution": (1e4 / (mpp * 2 ** k),) * 2, "resolutionunit": "CENTIMETER"}
            tiff.write(_tiles(level, tile_size), shape=level.shape, dtype=np.uint8,
                       photometric="rgb", tile=(tile_size, tile_size), compression="zlib",
                       compressionargs={"level": compression_level},
                       subfiletype=1 if k else 0, metadata=None, **resolution)
