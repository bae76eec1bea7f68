"""needles-evaluate: metrics of a run's best model on a dataset split, printed and saved as JSON.

  needles-evaluate --model_dir=runs/demo --data_dir=tfrecords/nmnist_64_2_embedded --split=test

Prints the metrics, then writes them to <model_dir>/eval_<split>_<dataset>.json (the dataset
directory's name) unless --output names another file.
"""

import sys

from absl import flags

from needles_tf import run_dir
from needles_tf.bin import common
from needles_tf.data import metadata

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory of needles-train (holds best.keras).")
flags.DEFINE_string("data_dir", None, "Dataset directory (TFRecords + dataset.json).")
flags.DEFINE_string("split", "test", "Split to evaluate: train, val or test.")
flags.DEFINE_string("output", None, "JSON file for the metrics; default "
                    "<model_dir>/eval_<split>_<name of --data_dir>.json.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.", lower_bound=1)
flags.DEFINE_integer("tile_size", None, "Stream each image through the model in tiles of this "
                     "many pixels: the same metrics with a tile's memory, for images too large "
                     "to run whole (models without instance normalisation).", lower_bound=1)


def _format(result: dict) -> str:
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    scores = "  ".join(f"{key} {result[key]:.4f}" if result[key] is not None else f"{key} n/a"
                       for key in ("accuracy", "precision", "recall", "auc",
                                   "average_precision"))
    return (f"{result['data_dir']} [{result['split']}], {result['count']} images: {scores}\n"
            f"confusion matrix (rows true 0/1, columns predicted 0/1): [[{tn}, {fp}], "
            f"[{fn}, {tp}]]")


def main(argv):
    common.no_arguments(argv)
    common.require_flags("needles-evaluate", "model_dir", "data_dir")
    output = FLAGS.output or run_dir.eval_path(FLAGS.model_dir, FLAGS.split, FLAGS.data_dir)
    try:
        # Paths first, so that a typo is reported without waiting for TensorFlow to load.
        run_dir.best_model_path(FLAGS.model_dir)
        metadata.split_metadata(metadata.read_metadata(FLAGS.data_dir), FLAGS.split, FLAGS.data_dir)
        common.warn_if_unfinished(FLAGS.model_dir)
        from needles_tf.evaluation.evaluate import evaluate

        model = run_dir.load_best_model(FLAGS.model_dir)
        result = evaluate(model, FLAGS.data_dir, FLAGS.split, FLAGS.batch_size, FLAGS.tile_size)
        result = {"model_dir": FLAGS.model_dir, **result}
    except (run_dir.RunDirError, metadata.DatasetError, ValueError, OSError) as e:
        sys.exit(f"needles-evaluate: error: {e}")
    common.show_and_write_json("needles-evaluate", _format(result), result, output, "metrics")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
