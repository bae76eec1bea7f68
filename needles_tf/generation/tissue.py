"""Where the tissue is on a slide: a low-resolution image and a mask of it, so that slide
prediction skips the glass.

Rule (documented, fixed): the slide is read at LOW_MPP (16 um per pixel, or finer for a slide
that would be under MIN_SIDE pixels there; wsi.py, tile by tile),
the HSV saturation of each pixel ((max - min) / max of R, G, B) is thresholded by Otsu's method
(scikit-image), never below MIN_SATURATION (so that a slide that is all glass or all tissue is
not split at noise), and the mask is cleaned: a closing with a 3 x 3 square joins nearby
pieces, then objects and holes smaller than MIN_AREA_UM2 (about 0.1 mm x 0.1 mm) are dropped
and filled. Stained tissue is saturated (pink, purple); glass, dust shadows and most scanner
background are grey or white.
"""

from __future__ import annotations

import numpy as np

from needles_tf.generation import wsi

LOW_MPP = 16.0
MIN_SATURATION = 0.05
MIN_AREA_UM2 = 100.0 * 100.0
READ_TILE = 512  # low-resolution pixels per read, so memory stays bounded
MIN_SIDE = 1024  # small slides are read finer, for a thumbnail of this size


def low_resolution(slide, path: str, mpp: float = LOW_MPP, min_side: int = MIN_SIDE,
                   assume_mpp: float | None = None) -> tuple[np.ndarray, wsi.Level]:
    """The slide as RGB uint8 at `mpp`, or finer where that gives fewer than `min_side` pixels
    on its longer side (never finer than the slide itself), and its grid.

    Raises:
      wsi.SlideError: the slide records no resolution and `assume_mpp` is None.
    """
    base = wsi.slide_mpp(slide, path, assume_mpp)
    if base is None:
        raise wsi.SlideError(f"{path}: no resolution in the slide's metadata; pass "
                             "--assume_mpp=MICRONS")
    extent = max(slide.dimensions) * base
    level = wsi.level_at_mpp(slide, max(min(mpp, extent / min_side), base), path, assume_mpp)
    image = np.empty((level.height, level.width, 3), np.uint8)
    for y in range(0, level.height, READ_TILE):
        for x in range(0, level.width, READ_TILE):
            h, w = min(READ_TILE, level.height - y), min(READ_TILE, level.width - x)
            image[y:y + h, x:x + w] = wsi.read_region(slide, level, x, y, w, h, path)
    return image, level


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an RGB uint8 image (0 for black)."""
    rgb = image.astype(np.float32)
    top, bottom = rgb.max(-1), rgb.min(-1)
    return np.where(top > 0, (top - bottom) / np.maximum(top, 1), 0.0)


def tissue_mask(image: np.ndarray, mpp: float) -> np.ndarray:
    """Boolean tissue mask of a low-resolution RGB image of `mpp` um per pixel (module rule)."""
    from scipy import ndimage
    from skimage import filters

    sat = saturation(image)
    threshold = MIN_SATURATION
    if sat.max() > sat.min():
        threshold = max(threshold, float(filters.threshold_otsu(sat)))
    mask = ndimage.binary_closing(sat > threshold, np.ones((3, 3), bool), border_value=0)
    area = max(1, int(round(MIN_AREA_UM2 / mpp ** 2)))
    return ~_drop_small(~_drop_small(mask, area), area)  # small pieces, then small holes


def _drop_small(mask: np.ndarray, area: int) -> np.ndarray:
    """`mask` without its 8-connected pieces of fewer than `area` pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, np.ones((3, 3), int))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= area
    keep[0] = False
    return keep[labels]
