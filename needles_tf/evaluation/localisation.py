"""Weakly-supervised localisation scores: one detection per image at a map's maximum.

The paper (appendix C.4, after Oquab et al. 2015) asks whether a classifier trained on image
labels alone finds the needle: each image gives one detection, at the maximum of its saliency (or
evidence) map, with that maximum as confidence. A detection inside the object is a true positive;
any other detection (a miss on a positive image, or any detection on a negative one) is a false
positive, and recall counts every positive image, so a missed needle is never recalled.
"""

from __future__ import annotations

import numpy as np


def peak(heat: np.ndarray) -> tuple[int, int, float]:
    """(row, column, value) of the maximum of `heat` [H, W] (the first, row-major, on ties)."""
    heat = np.asarray(heat)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(col), float(heat[row, col])


def detection_average_precision(confidences: np.ndarray, hits: np.ndarray,
                                labels: np.ndarray) -> float | None:
    """VOC-style average precision of one detection per image; None without positive images.

    Args:
        confidences: [N] each image's detection confidence (its map's maximum).
        hits: [N] bool, whether the detection lies inside the image's object (False where the
            image has none).
        labels: [N] 0 / 1, whether the image holds a needle.

    Returns:
        The area under the precision-recall curve, precision made monotone from the right
        (VOC 2010 on), recall over all positive images. Detections of equal confidence are
        ranked in image order.
    """
    confidences = np.asarray(confidences, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    hits = np.asarray(hits, bool).ravel()
    if not confidences.shape == hits.shape == labels.shape:
        raise ValueError(f"{confidences.size} confidences, {hits.size} hits and {labels.size} "
                         "labels: one of each per image expected")
    positives = int((labels == 1).sum())
    if positives == 0:
        return None
    order = np.argsort(-confidences, kind="stable")
    true = (hits & (labels == 1))[order]
    precision = np.cumsum(true) / np.arange(1, true.size + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    # recall rises by 1 / positives at each true positive and nowhere else
    return float(envelope[true].sum() / positives)


def pointing_accuracy(hits: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of positive images whose map maximum lies inside the object (pointing game);
    None without positive images."""
    positive = np.asarray(labels).ravel() == 1
    return float(np.asarray(hits, bool).ravel()[positive].mean()) if positive.any() else None
