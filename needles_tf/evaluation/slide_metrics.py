"""Slide-level metrics: slide AUC with a bootstrap interval, and CAMELYON16's lesion-level FROC.

Slide AUC: the area under the ROC curve of the slide scores (scikit-learn), with a percentile
bootstrap interval: slides resampled with replacement `resamples` times (seeded); resamples that
hold only one class have no AUC and are left out (their count is reported).

FROC (CAMELYON16, Bejnordi et al. 2017): every detection is a point (level-0 x, y) with a
confidence. A detection inside a lesion of the evaluation map (lesions.py) hits that lesion
(the lesion's confidence is the highest among its hits); one inside an isolated-tumour-cell
lesion is ignored; any other is a false positive. At each threshold t (every distinct
confidence), sensitivity = lesions whose confidence is >= t / all lesions that are not isolated
tumour cells, and false positives per slide = false positives with confidence >= t / all
slides (lesion-free ones included). The score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and
8 false positives per slide, linearly interpolated along the curve (the challenge's rule;
beyond its ends the curve's end values are taken).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn import metrics as skm

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
IGNORED = -1  # a detection on an isolated-tumour-cell lesion


def slide_auc(labels: Sequence[int], scores: Sequence[float], resamples: int = 1000,
              seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """{"auc", "ci_low", "ci_high", "confidence", "resamples", "resamples_used", "slides",
    "positives"}; AUC and interval None when the labels hold one class.

    Raises:
      ValueError: labels not 0 / 1, scores not finite, or sizes that differ.
    """
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.isin(y, (0, 1)).all() or not np.isfinite(s).all():
        raise ValueError("labels must be 0 / 1 and scores finite")
    out = {"auc": None, "ci_low": None, "ci_high": None, "confidence": confidence,
           "resamples": resamples, "resamples_used": 0, "slides": int(y.size),
           "positives": int(y.sum())}
    if not 0 < y.sum() < y.size:
        return out
    out["auc"] = float(skm.roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(resamples):
        pick = rng.integers(0, y.size, y.size)
        if 0 < y[pick].sum() < y.size:
            aucs.append(skm.roc_auc_score(y[pick], s[pick]))
    if aucs:
        tail = 100 * (1 - confidence) / 2
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(aucs, [tail, 100 - tail]))
    out["resamples_used"] = len(aucs)
    return out


@dataclasses.dataclass(frozen=True)
class SlideHits:
    """One slide's detections scored against its lesions.

    Attributes:
      confidences: [n] each detection's confidence.
      hits: [n] the lesion each one lies in (1..), 0 for none (a false positive), IGNORED for
        an isolated-tumour-cell lesion.
      lesions: the slide's lesion labels that count (not isolated tumour cells).
    """

    confidences: np.ndarray
    hits: np.ndarray
    lesions: tuple[int, ...]


def froc(slides: Mapping[str, SlideHits], fp_rates: Sequence[float] = FP_RATES
         ) -> dict[str, Any]:
    """The FROC curve and score of scored detections over slides (module docstring).

    Returns:
      {"score": mean sensitivity at `fp_rates` (None without lesions), "sensitivities": those,
      "fp_rates", "curve": {"fp_per_slide", "sensitivity", "thresholds"}, "lesions",
      "slides", "false_positives"}.
    """
    if not slides:
        raise ValueError("no slides to score")
    lesion_best, fp_confidences = {}, []
    for name, slide in slides.items():
        confidences = np.asarray(slide.confidences, np.float64).ravel()
        hits = np.asarray(slide.hits).ravel()
        if confidences.shape != hits.shape:
            raise ValueError(f"{name}: {confidences.size} confidences but {hits.size} hits")
        fp_confidences += confidences[hits == 0].tolist()
        for lesion in slide.lesions:
            found = confidences[hits == lesion]
            lesion_best[(name, lesion)] = found.max() if found.size else -np.inf
    total = len(lesion_best)
    best = np.array(sorted(lesion_best.values()), np.float64)
    fps = np.sort(np.array(fp_confidences, np.float64))
    thresholds = np.unique(np.concatenate([best[np.isfinite(best)], fps]))[::-1]
    fp_curve = (fps.size - np.searchsorted(fps, thresholds, "left")) / len(slides)
    found = best.size - np.searchsorted(best, thresholds, "left")
    sensitivity = found / total if total else np.zeros_like(fp_curve)
    result = {"fp_rates": [float(r) for r in fp_rates], "lesions": total,
              "slides": len(slides), "false_positives": int(fps.size),
              "curve": {"fp_per_slide": fp_curve.tolist(), "sensitivity": sensitivity.tolist(),
                        "thresholds": thresholds.tolist()},
              "score": None, "sensitivities": None}
    if total and thresholds.size:
        at = np.interp(fp_rates, fp_curve, sensitivity)  # fp_curve rises as thresholds fall
        result["sensitivities"] = [float(v) for v in at]
        result["score"] = float(np.mean(at))
    elif total:
        result["sensitivities"], result["score"] = [0.0] * len(fp_rates), 0.0
    return result
