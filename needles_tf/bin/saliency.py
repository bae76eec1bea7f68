"""needles-saliency: where a run's best model looks, scored against the needles, and drawn.

  needles-saliency --model_dir=runs/demo/nmnist_o2i_19.1_seed0 --data_dir=tfrecords/demo_19.1

For every image of the split: the saliency map (gradient of the needle logit, RMS over
channels) and the evidence map, each giving one detection at its maximum. Prints and writes
(<output_dir>/detection.json) the detection average precision and the pointing accuracy of
both maps beside the pointing game's chance level, and draws up to --num_images images per
outcome (true_positive.png, false_positive.png, false_negative.png, true_negative.png).
"""

import os
import sys

from absl import flags

from needles_tf import atomic, run_dir
from needles_tf.bin import common
from needles_tf.data import metadata

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory of needles-train (holds best.keras).")
flags.DEFINE_string("data_dir", None, "Dataset directory (TFRecords + dataset.json) whose "
                    "records carry object/bbox or object/mask.")
flags.DEFINE_string("split", "val", "Split: train, val or test.")
flags.DEFINE_integer("num_images", 16, "Images drawn per outcome (0: no figures).",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", 32, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the choice of images drawn.")
flags.DEFINE_boolean("progress", True, "Show a progress bar on stderr.")
flags.DEFINE_string("output_dir", None, "Where detection.json and the figures go; default "
                    "<model_dir>/saliency_<split>_<name of --data_dir>.")

PROG = "needles-saliency"


def _table(scores: dict) -> str:
    def number(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"{scores['data_dir']} [{scores['split']}], {scores['count']} images "
             f"({scores['positives']} with a needle):",
             f"{'map':>9}  {'detection AP':>12}  {'pointing accuracy':>17}  {'chance':>6}"]
    for name in ("saliency", "evidence"):
        lines.append(f"{name:>9}  {number(scores[name]['average_precision']):>12}  "
                     f"{number(scores[name]['pointing_accuracy']):>17}  "
                     f"{number(scores['pointing_chance']):>6}")
    return "\n".join(lines)


def main(argv):
    common.no_arguments(argv)
    common.require_flags(PROG, "model_dir", "data_dir")
    dataset = os.path.basename(os.path.abspath(FLAGS.data_dir))
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.model_dir,
                                                  f"saliency_{FLAGS.split}_{dataset}")
    try:
        # Paths first, so that a typo is reported without waiting for TensorFlow to load.
        run_dir.best_model_path(FLAGS.model_dir)
        metadata.split_metadata(metadata.read_metadata(FLAGS.data_dir), FLAGS.split, FLAGS.data_dir)
        common.warn_if_unfinished(FLAGS.model_dir)
        from needles_tf.evaluation.saliency import localise

        model = run_dir.load_best_model(FLAGS.model_dir)
        scores, examples = localise(model, FLAGS.data_dir, FLAGS.split, FLAGS.batch_size,
                                    FLAGS.num_images, FLAGS.seed, FLAGS.progress)
    except (run_dir.RunDirError, metadata.DatasetError, ValueError, OSError) as e:
        sys.exit(f"{PROG}: error: {e}")
    print(_table(scores), flush=True)  # before writing: the scores are seen even if that fails
    try:
        os.makedirs(output_dir, exist_ok=True)
        atomic.write_json(os.path.join(output_dir, "detection.json"),
                          {"model_dir": FLAGS.model_dir, **scores})
        from needles_tf.evaluation.saliency_figures import write_examples_figure

        for outcome, kept in examples.items():
            if kept:
                title = (f"{outcome.replace('_', ' ')}s: {len(kept)} of "
                         f"{scores['outcomes'][outcome]} ({FLAGS.split}, {dataset})")
                write_examples_figure(os.path.join(output_dir, f"{outcome}.png"), kept, title)
    except OSError as e:
        sys.exit(f"{PROG}: error: cannot write in {output_dir}: {e.strerror or e}")
    print(f"scores and figures written to {output_dir}")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
