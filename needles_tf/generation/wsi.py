"""Reading whole-slide images at a physical resolution (microns per pixel), shared by nCAMELYON
extraction and slide prediction.

Scanners differ: one pyramid level index is a different physical scale from slide to slide
(CAMELYON's centres used scanners of different makes; other cohorts mix 20x, about 0.5 um per
pixel, and 40x, about 0.25 um). So pixels are addressed on a *grid*: the slide at one resolution.

* `level_at_mpp`: the grid at a target resolution. The slide's own resolution comes from
  openslide's `openslide.mpp-x` / `openslide.mpp-y` (from the vendor's metadata or the TIFF
  resolution tags); pixels are read from the coarsest pyramid level at or finer than the target
  (never upsampled) and resampled to the target with Pillow's Lanczos filter, which widens with
  the reduction (anti-aliased). A
  target within 0.1 % of a pyramid level's resolution reads that level as it is.
* `level_at_index`: a pyramid level as it is (the former `--level`; no resampling).
* `read_region` reads any window of a grid. A resampled window reads a margin of source pixels
  around it (the filter's reach), so a pixel comes out the same whichever window it is read in
  (up to the uint8 rounding of the filter's sum): tiles of a grid put side by side are the grid.
* Masks are not resampled: lesion polygons are rasterised on the grid itself
  (camelyon.rasterize), which is exact at any resolution.

Slides with non-square pixels (mpp-x and mpp-y more than 2 % apart) are refused.
Every problem raises `SlideError`, whose message starts with the slide's path.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

MPP_PROPERTIES = ("openslide.mpp-x", "openslide.mpp-y")
SNAP = 1e-3  # a target this close (relative) to a pyramid level reads that level as it is
SQUARE_TOLERANCE = 0.02
LANCZOS_SUPPORT = 3  # Pillow's Lanczos reaches 3 source pixels per output pixel's width


class SlideError(ValueError):
    """A slide or annotation file that cannot be used; the message starts with its path."""


def magnification_mpp(magnification: float) -> float:
    """Microns per pixel of an objective magnification by the usual convention: 10 um / M
    (40x: 0.25, 20x: 0.5, 10x: 1.0). Scanners differ from it by up to about 10 %."""
    if not magnification > 0:
        raise ValueError(f"magnification must be positive, got {magnification}")
    return 10.0 / magnification


def open_slide(path: str):
    """An openslide.OpenSlide of `path` (SlideError naming the file if openslide cannot)."""
    import openslide

    try:
        return openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as e:
        raise SlideError(f"{path}: openslide cannot open it ({e}); expected a whole-slide image "
                         "such as a pyramidal tiled TIFF") from e


def slide_mpp(slide, path: str, assume_mpp: float | None = None) -> float | None:
    """The slide's level-0 microns per pixel, or `assume_mpp` when it records none (None if
    neither).

    Raises:
      SlideError: unreadable or non-positive values, or non-square pixels.
    """
    values = [slide.properties.get(key) for key in MPP_PROPERTIES]
    if all(v is None for v in values):
        return assume_mpp
    try:
        mpp_x, mpp_y = (float(v) for v in values)
    except (TypeError, ValueError):
        raise SlideError(f"{path}: unreadable resolution {dict(zip(MPP_PROPERTIES, values))}; "
                         "expected microns per pixel in both") from None
    if not (mpp_x > 0 and mpp_y > 0 and math.isfinite(mpp_x + mpp_y)):
        raise SlideError(f"{path}: resolution {mpp_x} x {mpp_y} um per pixel is not positive")
    if abs(mpp_x - mpp_y) > SQUARE_TOLERANCE * max(mpp_x, mpp_y):
        raise SlideError(f"{path}: non-square pixels ({mpp_x} x {mpp_y} um) are not supported")
    return (mpp_x + mpp_y) / 2


@dataclasses.dataclass(frozen=True)
class Level:
    """A grid of a slide: its size, its level-0 pixels per pixel, and how it is read.

    Attributes:
      index: the pyramid level read.
      width, height: the grid's size in its own pixels.
      downsample: level-0 pixels per grid pixel (not a whole number when resampled).
      width0, height0: the slide's level-0 size.
      source_downsample: the read pyramid level's own downsample (None: that of the grid).
      mpp: microns per grid pixel (None: the slide records no resolution).
    """

    index: int
    width: int
    height: int
    downsample: float
    width0: int
    height0: int
    source_downsample: float | None = None
    mpp: float | None = None

    @property
    def scale(self) -> float:
        """Source-level pixels per grid pixel: 1 when the pyramid level is read as it is."""
        return 1.0 if self.source_downsample is None else self.downsample / self.source_downsample


def level_at_index(slide, level: int, path: str, assume_mpp: float | None = None) -> Level:
    """Pyramid `level` of an open slide as it is (SlideError if it has no such level)."""
    if not 0 <= level < slide.level_count:
        raise SlideError(f"{path}: no pyramid level {level} (the slide has {slide.level_count} "
                         "levels); choose a smaller --level")
    width, height = slide.level_dimensions[level]
    width0, height0 = slide.dimensions
    downsample = float(slide.level_downsamples[level])
    base = slide_mpp(slide, path, assume_mpp)
    return Level(level, width, height, downsample, width0, height0,
                 mpp=None if base is None else base * downsample)


def level_at_mpp(slide, mpp: float, path: str, assume_mpp: float | None = None) -> Level:
    """The slide's grid at `mpp` microns per pixel, read from the coarsest pyramid level at or
    finer than it.

    Raises:
      SlideError: the slide records no resolution (and no `assume_mpp`), or was scanned
        coarser than `mpp` (upsampling would invent detail).
    """
    base = slide_mpp(slide, path, assume_mpp)
    if base is None:
        raise SlideError(f"{path}: no resolution in the slide's metadata ({MPP_PROPERTIES[0]}); "
                         "pass --assume_mpp=MICRONS to read it at a resolution you know")
    downsample = mpp / base
    if downsample < 1 - SNAP:
        raise SlideError(f"{path}: scanned at {base:.4g} um per pixel, coarser than the "
                         f"{mpp:.4g} asked for; it cannot be read at that resolution")
    downsamples = [float(d) for d in slide.level_downsamples]
    index = max(i for i, d in enumerate(downsamples) if d <= downsample * (1 + SNAP))
    width0, height0 = slide.dimensions
    if abs(downsamples[index] - downsample) <= SNAP * downsample:  # a level as it is
        width, height = slide.level_dimensions[index]
        return Level(index, width, height, downsamples[index], width0, height0,
                     mpp=base * downsamples[index])
    width, height = int(width0 / downsample), int(height0 / downsample)
    if min(width, height) < 1:
        raise SlideError(f"{path}: {width0} x {height0} pixels at {base:.4g} um give no pixel "
                         f"at {mpp:.4g} um")
    return Level(index, width, height, downsample, width0, height0, downsamples[index], mpp)


def level_for(slide, path: str, level: int | None = None, mpp: float | None = None,
              assume_mpp: float | None = None) -> Level:
    """The grid at `mpp` when given, else pyramid `level` as it is."""
    if mpp is not None:
        return level_at_mpp(slide, mpp, path, assume_mpp)
    if level is None:
        raise ValueError("give a pyramid level or a resolution in microns per pixel")
    return level_at_index(slide, level, path, assume_mpp)


def _read_source(slide, index: int, downsample: float, x: int, y: int, width: int,
                 height: int, path: str) -> np.ndarray:
    """RGB uint8 [height, width, 3] of pyramid level `index` from its pixel (x, y); outside the
    scanned area (transparent) becomes white, like empty glass."""
    import openslide

    # ceil keeps openslide's truncating division by a non-integer downsample on pixel x.
    location = (int(np.ceil(x * downsample)), int(np.ceil(y * downsample)))
    try:
        rgba = np.asarray(slide.read_region(location, index, (width, height)))
    except openslide.OpenSlideError as e:
        raise SlideError(f"{path}: cannot read a {width}x{height} region at level {index} "
                         f"({e})") from e
    alpha = rgba[..., 3:4].astype(np.uint16)
    # openslide returns premultiplied alpha: composite onto white.
    return (rgba[..., :3] + (255 - alpha)).clip(0, 255).astype(np.uint8)


def read_region(slide, level: Level, x: int, y: int, width: int, height: int,
                path: str = "") -> np.ndarray:
    """RGB uint8 [height, width, 3] of the grid `level` with top-left (x, y) in its pixels."""
    if level.scale == 1.0:
        return _read_source(slide, level.index, level.downsample, x, y, width, height, path)
    from PIL import Image

    scale = level.scale
    margin = math.ceil(LANCZOS_SUPPORT * scale) + 1
    box = (x * scale, y * scale, (x + width) * scale, (y + height) * scale)
    left, top = math.floor(box[0]) - margin, math.floor(box[1]) - margin
    right, bottom = math.ceil(box[2]) + margin, math.ceil(box[3]) + margin
    source = _read_source(slide, level.index, level.source_downsample, left, top, right - left,
                          bottom - top, path)
    resized = Image.fromarray(source).resize(
        (width, height), Image.Resampling.LANCZOS,
        box=(box[0] - left, box[1] - top, box[2] - left, box[3] - top))
    return np.asarray(resized)


def read_crop(slide, level: Level, x: int, y: int, size: int, path: str = "") -> np.ndarray:
    """RGB uint8 [size, size, 3] of the grid `level` with top-left (x, y) in its pixels."""
    return read_region(slide, level, x, y, size, size, path)
