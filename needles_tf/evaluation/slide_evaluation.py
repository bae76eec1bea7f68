"""Slide predictions scored against labels and lesion annotations (needles-evaluate-slides).

Scores come from needles-predict-slide's output directory (its slides.csv, and for FROC each
slide's record and evidence map) or from any CSV with slide and probability/score columns;
labels from slide_labels.py's files. Slides with a label but no score (not predicted, or
failed) are listed as missing; slides with a score but no label are ignored.

FROC needs the lesion annotations (ASAP XML, <slide>.xml in `annotation_dir`) and the evidence
maps: a slide labelled positive without an annotation cannot be scored for lesions and is left
out of the FROC (listed); a slide labelled negative without one is lesion-free.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from needles_tf.evaluation import lesions, slide_labels, slide_metrics
from needles_tf.generation import camelyon
from needles_tf.serving import slide_outputs


def _lesion_froc(out_dir: str, labels: dict[str, int], names: Sequence[str],
                 annotation_dir: str, lesion_groups: Sequence[str],
                 exclusion_groups: Sequence[str], min_distance: int) -> dict[str, Any]:
    records = slide_outputs.read_records(out_dir)
    scored, left_out = {}, []
    for name in names:
        record = records.get(name)
        xml = record and camelyon.annotation_path(record["path"], annotation_dir)
        if record is None or (xml is None and labels[name]):
            left_out.append(name)
            continue
        found = None
        if xml is not None:
            annotations = camelyon.parse_asap_xml(xml, lesion_groups, exclusion_groups)
            if not record["slide_mpp"]:
                raise camelyon.SlideError(f"{record['path']}: no resolution recorded; lesion "
                                          "maps need microns per pixel")
            found = lesions.lesion_map(annotations, record["width0"], record["height0"],
                                       record["slide_mpp"])
        geometry = record["evidence"]
        detections = lesions.heatmap_detections(
            slide_outputs.load_evidence(out_dir, record), geometry["downsample"],
            geometry["origin"], min_distance)
        scored[name] = lesions.score_slide(detections, found)
    if not scored:
        raise ValueError(f"{out_dir}: no slide with a prediction record to score lesions on")
    return {**slide_metrics.froc(scored), "left_out": left_out}


def evaluate_slides(predictions: str, labels_path: str, annotation_dir: str | None = None,
                    lesion_groups: Sequence[str] = camelyon.DEFAULT_LESION_GROUPS,
                    exclusion_groups: Sequence[str] = camelyon.DEFAULT_EXCLUSION_GROUPS,
                    resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                    min_distance: int = 2) -> dict[str, Any]:
    """Slide AUC with its bootstrap interval and, with `annotation_dir`, the lesion FROC.

    Args:
      predictions: needles-predict-slide's output directory, or a CSV of slide scores.
      labels_path: the label file (slide_labels.read_labels).
      min_distance: evidence-map pixels between two detections (local maxima).

    Raises:
      slide_labels.LabelError, camelyon.SlideError: unusable inputs, naming the file.
      ValueError: no slide with both a label and a score, or no `annotation_dir` folder.
    """
    folder = predictions if os.path.isdir(predictions) else None
    scores = slide_labels.read_scores(
        os.path.join(folder, slide_outputs.CSV_NAME) if folder else predictions)
    labels = slide_labels.read_labels(labels_path)
    names = sorted(set(scores) & set(labels))
    if not names:
        raise ValueError(f"no slide of {labels_path} has a score in {predictions}")
    result: dict[str, Any] = {
        "predictions": predictions, "labels": labels_path, "slides": len(names),
        "missing": sorted(set(labels) - set(scores)),
        "auc": slide_metrics.slide_auc([labels[n] for n in names], [scores[n] for n in names],
                                       resamples, seed, confidence),
        "froc": None}
    if annotation_dir is not None:
        if not os.path.isdir(annotation_dir):
            raise ValueError(f"{annotation_dir}: no such folder; expected the lesion "
                             "annotations (ASAP XML, <slide>.xml)")
        if folder is None:
            raise ValueError("lesion FROC needs needles-predict-slide's output directory "
                             f"(evidence maps), not the CSV {predictions}")
        result["froc"] = _lesion_froc(folder, labels, names, annotation_dir, lesion_groups,
                                      exclusion_groups, min_distance)
    return result
