"""needles-make-nmnist: generate an nMNIST dataset (TFRecords + dataset.json).

  needles-make-nmnist --flagfile=flags/nmnist/o2i_1.2.cfg --mnist=idx:/data/mnist --workers=2

Re-running with the same flags resumes an interrupted run (finished shards are kept) or repairs
deleted / corrupt shards; other flags on an existing directory need --overwrite.
"""

import os
import sys

from absl import flags

from needles_tf.bin import common
from needles_tf.data import metadata
from needles_tf.generation import mnist, nmnist

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Dataset directory; default "
                    "tfrecords/nmnist_<canvas>_<clutter>_<mnist kind>.")
flags.DEFINE_integer("canvas_size", 64, "Canvas height = width in pixels (>= the digit size).",
                     lower_bound=4)
flags.DEFINE_integer("num_clutter", 2, "Clutter digits per positive image (negatives get one "
                     "more).", lower_bound=0)
flags.DEFINE_integer("digit_size", 28, "Digits resized to this many pixels (the paper: 28): "
                     "the same O2I ratio at a smaller canvas (e.g. 14: O2I 1.2 % at 128).",
                     lower_bound=4, upper_bound=28)
flags.DEFINE_integer("needle_digit", 3, "The digit to find.", lower_bound=0, upper_bound=9)
flags.DEFINE_integer("duplicates", 2, "Positives per needle digit in val and test.",
                     lower_bound=0)
flags.DEFINE_integer("train_duplicates", 1, "Positives per needle digit in train (1 gives the "
                     "paper's 11276 images with full MNIST, 2 its largest set, 22552).",
                     lower_bound=0)
flags.DEFINE_string("mnist", "embedded", "MNIST source: embedded | idx:DIR | keras.")
flags.DEFINE_integer("seed", 0, "Random seed of the composition.")
flags.DEFINE_integer("num_shards", 8, "Shards of the train split (others proportionally fewer).",
                     lower_bound=1)
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace a dataset with other parameters.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")


def main(argv):
    common.no_arguments(argv)
    try:
        kind, _ = mnist.parse_source(FLAGS.mnist)
        output_dir = FLAGS.output_dir or os.path.join(
            "tfrecords", f"nmnist_{FLAGS.canvas_size}_{FLAGS.num_clutter}_{kind}")
        meta = nmnist.generate_nmnist(
            output_dir, canvas_size=FLAGS.canvas_size, num_clutter=FLAGS.num_clutter,
            needle_digit=FLAGS.needle_digit,
            duplicates={"train": FLAGS.train_duplicates, "val": FLAGS.duplicates,
                        "test": FLAGS.duplicates},
            mnist_source=FLAGS.mnist, seed=FLAGS.seed, num_shards=FLAGS.num_shards,
            workers=FLAGS.workers, overwrite=FLAGS.overwrite, progress=FLAGS.progress,
            digit_size=FLAGS.digit_size)
    except (mnist.MnistSourceError, metadata.DatasetError, ValueError, OSError) as e:
        sys.exit(f"needles-make-nmnist: error: {e}")  # a data problem: no usage text
    counts = ", ".join(f"{s} {v['count']} ({v['positives']} positive)"
                       for s, v in meta["splits"].items())
    print(f"{output_dir}: O2I {100 * meta['params']['o2i']:.3g} %, {counts}")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
