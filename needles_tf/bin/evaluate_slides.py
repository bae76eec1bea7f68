"""needles-evaluate-slides: slide AUC with a bootstrap interval, and CAMELYON16's lesion FROC.

  needles-evaluate-slides --predictions=predictions --labels=testing/reference.csv \
      --annotation_dir=testing/lesion_annotations

--predictions is needles-predict-slide's output directory (or any CSV with slide and
probability or score columns); --labels a CAMELYON16 reference.csv, a CAMELYON17
stage_labels.csv or a CSV with header slide,label. With --annotation_dir (ASAP XML per slide),
the lesion-level FROC from the local maxima of the evidence maps: average sensitivity at 1/4,
1/2, 1, 2, 4 and 8 false positives per slide. Prints the results and writes them as JSON.
"""

import os
import sys

from absl import flags

from needles_tf.bin import common
from needles_tf.generation import camelyon

FLAGS = flags.FLAGS
flags.DEFINE_string("predictions", None, "needles-predict-slide's output directory, or a CSV of "
                    "slide scores.")
flags.DEFINE_string("labels", None, "Slide labels: reference.csv, stage_labels.csv or "
                    "slide,label CSV.")
flags.DEFINE_string("annotation_dir", None, "ASAP XML lesion annotations (<slide>.xml): adds "
                    "the lesion FROC.")
flags.DEFINE_list("lesion_groups", list(camelyon.DEFAULT_LESION_GROUPS), "ASAP groups of "
                  "lesion polygons.")
flags.DEFINE_list("exclusion_groups", list(camelyon.DEFAULT_EXCLUSION_GROUPS), "ASAP groups "
                  "cut out of lesions.")
flags.DEFINE_integer("resamples", 1000, "Bootstrap resamples of the slides.", lower_bound=1)
flags.DEFINE_float("confidence", 0.95, "Confidence of the bootstrap interval.", lower_bound=0,
                   upper_bound=1)
flags.DEFINE_integer("seed", 0, "Bootstrap seed.", lower_bound=0)
flags.DEFINE_integer("min_distance", 2, "Evidence-map pixels between two detections.",
                     lower_bound=1)
flags.DEFINE_string("output", None, "JSON file of the results; default "
                    "<predictions>/slide_evaluation.json (beside a CSV).")

PROG = "needles-evaluate-slides"


def _format(result: dict) -> str:
    auc = result["auc"]
    lines = [f"{result['slides']} slides ({auc['positives']} positive)"
             + (f"; {len(result['missing'])} labelled but without a score"
                if result["missing"] else "")]
    if auc["auc"] is None:
        lines.append("slide AUC: undefined (one class only)")
    else:
        interval = ("" if auc["ci_low"] is None else
                    f" ({100 * auc['confidence']:g} % CI {auc['ci_low']:.3f}-{auc['ci_high']:.3f},"
                    f" {auc['resamples_used']} resamples)")
        lines.append(f"slide AUC {auc['auc']:.3f}{interval}")
    froc = result["froc"]
    if froc is not None:
        if froc["left_out"]:
            lines.append(f"FROC leaves out {len(froc['left_out'])} slides (positive without an "
                         "annotation, or no prediction record): "
                         + ", ".join(froc["left_out"]))
        if froc["score"] is None:
            lines.append("FROC: undefined (no lesion to find)")
        else:
            at = "  ".join(f"{rate:g}: {value:.3f}"
                           for rate, value in zip(froc["fp_rates"], froc["sensitivities"]))
            lines.append(f"FROC score {froc['score']:.3f} ({froc['lesions']} lesions, "
                         f"{froc['slides']} slides); sensitivity at FP per slide  {at}")
    return "\n".join(lines)


def main(argv):
    common.no_arguments(argv)
    common.require_flags(PROG, "predictions", "labels")
    from needles_tf.evaluation.slide_evaluation import evaluate_slides
    from needles_tf.evaluation.slide_labels import LabelError

    folder = (FLAGS.predictions if os.path.isdir(FLAGS.predictions)
              else os.path.dirname(FLAGS.predictions))
    output = FLAGS.output or os.path.join(folder, "slide_evaluation.json")
    try:
        result = evaluate_slides(FLAGS.predictions, FLAGS.labels, FLAGS.annotation_dir,
                                 FLAGS.lesion_groups, FLAGS.exclusion_groups, FLAGS.resamples,
                                 FLAGS.seed, FLAGS.confidence, FLAGS.min_distance)
    except (LabelError, camelyon.SlideError, ValueError, OSError) as e:
        sys.exit(f"{PROG}: error: {e}")
    common.show_and_write_json(PROG, _format(result), result, output, "results")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
