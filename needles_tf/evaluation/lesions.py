"""Lesions to score detections against, and detections from heatmaps (CAMELYON16's FROC).

Evaluation map (the challenge's rule, written here from its description): the annotated lesions
rasterised on a coarse grid of the slide, grown by half of 75 um (about five tumour cells: a
detection that close to a lesion counts as on it), holes filled, and labelled as 8-connected
regions. A region whose major axis is under 275 um is isolated tumour cells: detections on it
are neither true nor false positives, and it is not a lesion to find.

Detections: the local maxima of a slide's evidence map (at least `min_distance` map pixels
apart, above `threshold`), each at the level-0 point its location is centred on, with the map's
value as confidence.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from needles_tf.evaluation.slide_metrics import IGNORED, SlideHits
from needles_tf.generation import camelyon, wsi

MARGIN_UM = 75.0 / 2
ITC_UM = 275.0
EVALUATION_MPP = 0.243 * 32  # the challenge's grid: level 5 of its 0.243 um scans


@dataclasses.dataclass(frozen=True)
class LesionMap:
    """Labelled lesions on a grid of `downsample` level-0 pixels per pixel; `itc` the labels of
    isolated tumour cells."""

    labels: np.ndarray
    downsample: float
    itc: frozenset[int]

    def hits(self, points: np.ndarray) -> np.ndarray:
        """The label under each level-0 (x, y) point: 0 outside lesions, IGNORED on isolated
        tumour cells."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        cols = np.floor(points[:, 0] / self.downsample).astype(int)
        rows = np.floor(points[:, 1] / self.downsample).astype(int)
        inside = ((rows >= 0) & (rows < self.labels.shape[0]) & (cols >= 0)
                  & (cols < self.labels.shape[1]))
        found = np.zeros(len(points), np.int64)
        found[inside] = self.labels[rows[inside], cols[inside]]
        return np.where(np.isin(found, list(self.itc)), IGNORED, found)

    @property
    def lesions(self) -> tuple[int, ...]:
        """The labels that count as lesions to find."""
        return tuple(int(v) for v in np.unique(self.labels) if v and v not in self.itc)


def lesion_map(annotations: camelyon.Annotations, width0: int, height0: int, mpp: float,
               grid_mpp: float = EVALUATION_MPP) -> LesionMap:
    """The evaluation map of a slide of width0 x height0 level-0 pixels at `mpp` um each."""
    from scipy import ndimage
    from skimage import measure

    downsample = grid_mpp / mpp
    level = wsi.Level(0, math.ceil(width0 / downsample), math.ceil(height0 / downsample),
                      downsample, width0, height0, mpp=grid_mpp)
    mask = camelyon.rasterize(annotations, level)
    full = mask.window(0, 0, level.height, level.width)
    near = ndimage.distance_transform_edt(~full) < MARGIN_UM / grid_mpp
    labels = measure.label(ndimage.binary_fill_holes(near), connectivity=2)
    itc = frozenset(region.label for region in measure.regionprops(labels)
                    if region.axis_major_length * grid_mpp < ITC_UM)
    return LesionMap(labels, downsample, itc)


def heatmap_detections(evidence: np.ndarray, downsample: float, origin: float,
                       min_distance: int = 2, threshold: float | None = None) -> np.ndarray:
    """float64 [n, 3] (level-0 x, y, confidence) at the local maxima of `evidence` [h, w].

    Args:
      evidence: the slide's map; NaN where nothing was computed (no tissue).
      downsample: level-0 pixels between neighbouring locations.
      origin: level-0 coordinate of location 0's centre (the same on both axes).
      min_distance: map pixels between two maxima.
      threshold: the lowest value kept (default: every maximum).
    """
    from skimage.feature import peak_local_max

    values = np.asarray(evidence, np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros((0, 3))
    floor = values[finite].min()
    filled = np.where(finite, values, floor - 1)
    peaks = peak_local_max(filled, min_distance=min_distance, exclude_border=False,
                           threshold_abs=floor - 0.5 if threshold is None else threshold)
    peaks = peaks[finite[peaks[:, 0], peaks[:, 1]]]
    xy = origin + peaks[:, ::-1] * downsample
    return np.column_stack([xy, values[peaks[:, 0], peaks[:, 1]]])


def score_slide(detections: np.ndarray, lesions: LesionMap | None) -> SlideHits:
    """A slide's detections against its lesions (None: a lesion-free slide)."""
    detections = np.asarray(detections, np.float64).reshape(-1, 3)
    if lesions is None:
        return SlideHits(detections[:, 2], np.zeros(len(detections), np.int64), ())
    return SlideHits(detections[:, 2], lesions.hits(detections[:, :2]), lesions.lesions)
