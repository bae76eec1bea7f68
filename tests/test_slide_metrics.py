"""Slide-level metrics on hand-made inputs whose values are computed by hand: slide AUC and its
bootstrap interval, CAMELYON16's lesion FROC, evaluation lesion maps, heatmap maxima, labels."""

import numpy as np
import pytest

from needles_tf.evaluation import lesions, slide_labels, slide_metrics
from needles_tf.evaluation.slide_metrics import IGNORED, SlideHits
from needles_tf.generation import camelyon


def test_slide_auc_and_its_bootstrap_interval():
    labels, scores = [0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.9]
    result = slide_metrics.slide_auc(labels, scores, resamples=100, seed=1)
    # 6 positive-negative pairs, 0.35 < 0.4 the only one ranked wrong
    assert result["auc"] == pytest.approx(5 / 6)
    assert result["ci_low"] <= 5 / 6 <= result["ci_high"] <= 1
    assert 70 < result["resamples_used"] <= 100 and result["positives"] == 3
    assert slide_metrics.slide_auc(labels, scores, resamples=100, seed=1) == result
    assert slide_metrics.slide_auc([1, 1], [0.2, 0.3])["auc"] is None


def test_froc_by_hand():
    """Slide a: lesions 1, 2; b: lesion-free; c: lesion 1 and isolated tumour cells (IGNORED).

    Lesions' best confidences a1 0.9, a2 0.3, c1 0.4; false positives 0.6, 0.7, 0.2; 3 slides.
    thresholds 0.9 0.7 0.6 0.4 0.3 0.2 -> FP/slide 0 1/3 2/3 2/3 2/3 1, sensitivity 1/3 1/3 1/3
    2/3 1 1; at 1/4 and 1/2 FP per slide: 1/3 (interpolated on a flat part), at 1, 2, 4, 8: 1.
    """
    slides = {"a": SlideHits(np.array([0.9, 0.8, 0.6, 0.3]), np.array([1, 1, 0, 2]), (1, 2)),
              "b": SlideHits(np.array([0.7, 0.2]), np.array([0, 0]), ()),
              "c": SlideHits(np.array([0.5, 0.4]), np.array([IGNORED, 1]), (1,))}
    result = slide_metrics.froc(slides)
    assert result["curve"]["thresholds"] == pytest.approx([0.9, 0.7, 0.6, 0.4, 0.3, 0.2])
    assert result["curve"]["fp_per_slide"] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    assert result["curve"]["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert result["sensitivities"] == pytest.approx([1 / 3, 1 / 3, 1, 1, 1, 1])
    assert result["score"] == pytest.approx(7 / 9)
    assert (result["lesions"], result["slides"], result["false_positives"]) == (3, 3, 3)
    # a lesion never hit holds sensitivity below 1 at every rate
    missed = {**slides, "d": SlideHits(np.zeros(0), np.zeros(0, int), (1,))}
    assert max(slide_metrics.froc(missed)["sensitivities"]) == pytest.approx(3 / 4)


def _square(name, x, y, side):
    points = np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], float)
    return camelyon.Polygon(name, "metastases", points)


def test_lesion_map_margin_and_isolated_tumour_cells():
    """0.5 um pixels: a 400 um lesion and a 100 um one (275 um > 100 + 2 * 37.5: isolated
    tumour cells), on an 8 um grid."""
    big, small = _square("big", 200, 200, 800), _square("small", 1400, 1400, 200)
    annotations = camelyon.Annotations("hand.xml", (big, small), ())
    found = lesions.lesion_map(annotations, 2000, 2000, mpp=0.5, grid_mpp=8.0)
    assert found.downsample == 16 and found.labels.shape == (125, 125)
    assert len(found.lesions) == 1 and len(found.itc) == 1
    points = np.array([[600, 600], [1500, 1500], [100, 1800],
                       [200 + 800 + 50, 600],    # 25 um outside the big lesion: on it
                       [200 + 800 + 110, 600]])  # 55 um outside: off it
    hits = found.hits(points)
    assert hits[0] == found.lesions[0] and hits[1] == IGNORED and hits[2] == 0
    assert hits[3] == found.lesions[0] and hits[4] == 0


def test_heatmap_maxima_are_detections_at_their_level0_centres():
    evidence = np.zeros((10, 12))
    evidence[2, 3], evidence[7, 9], evidence[8, 1] = 5.0, 3.0, 2.0
    evidence[6:, :3] = np.nan  # no tissue: (8, 1) is not a detection
    found = lesions.heatmap_detections(evidence, downsample=16, origin=12, threshold=1.0)
    assert sorted(map(tuple, found)) == [(12 + 3 * 16, 12 + 2 * 16, 5.0),
                                         (12 + 9 * 16, 12 + 7 * 16, 3.0)]
    scored = lesions.score_slide(found, None)
    assert scored.hits.tolist() == [0, 0] and scored.lesions == ()


def test_label_files(tmp_path):
    c16 = tmp_path / "reference.csv"
    c16.write_text("test_001,Tumor,Macro,Primary\ntest_002,Normal,,\n")
    assert slide_labels.read_labels(str(c16)) == {"test_001": 1, "test_002": 0}
    c17 = tmp_path / "stage_labels.csv"
    c17.write_text("patient,stage\npatient_000.zip,pN1\npatient_000_node_0.tif,negative\n"
                   "patient_000_node_1.tif,itc\npatient_000_node_2.tif,macro\n")
    assert slide_labels.read_labels(str(c17)) == {
        "patient_000_node_0": 0, "patient_000_node_1": 1, "patient_000_node_2": 1}
    simple = tmp_path / "labels.csv"
    simple.write_text("slide,label\na.tif,1\nb,0\nc,2\n")
    with pytest.raises(slide_labels.LabelError, match=r"labels\.csv: row 4: label '2'"):
        slide_labels.read_labels(str(simple))
    scores = tmp_path / "slides.csv"
    scores.write_text("slide,path,probability\na,/x/a.tif,0.9\nb,/x/b.tif,\n")
    assert slide_labels.read_scores(str(scores)) == {"a": 0.9}
