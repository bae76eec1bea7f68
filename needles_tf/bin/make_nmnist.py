"""needles-make-nmnist: writes an nMNIST dataset (TFRecords + dataset.json) for one O2I.

    needles-make-nmnist --flagfile=flags/nmnist/o2i_1.2.cfg --output_dir=tfrecords/nmnist_1.2
"""

from absl import app, flags

from needles_tf.data.mnist import MnistError
from needles_tf.data.nmnist import NMnistConfig, make_nmnist
from needles_tf.data.records import RecordsError

flags.DEFINE_string("output_dir", None, "Directory for the shards and dataset.json.", required=True)
flags.DEFINE_integer("canvas_size", 64, "Canvas height and width in pixels (>= 28).")
flags.DEFINE_integer("num_clutter", 2, "Clutter digits per image (n; negatives get n + 1).")
flags.DEFINE_integer("needle_digit", 3, "The digit to find.")
flags.DEFINE_integer("duplicates", 2, "Uses of each needle digit for val / test positives.")
flags.DEFINE_integer("train_duplicates", 1, "Uses of each needle digit for train positives "
                     "(1: the paper's 11276 with full MNIST; 2: its largest set, 22552).")
flags.DEFINE_string("mnist", "embedded", "MNIST source: embedded | idx:DIR | keras.")
flags.DEFINE_integer("seed", 0, "Random seed; the output is identical for a seed.")
flags.DEFINE_integer("num_shards", 4, "Shards per split.")
flags.DEFINE_integer("workers", 1, "Worker processes.")
flags.DEFINE_bool("overwrite", False, "Replace a dataset of other parameters in output_dir.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        config = NMnistConfig(FLAGS.canvas_size, FLAGS.num_clutter, FLAGS.needle_digit,
                              FLAGS.duplicates, FLAGS.train_duplicates, FLAGS.mnist, FLAGS.seed)
        metadata = make_nmnist(FLAGS.output_dir, config, FLAGS.num_shards, FLAGS.workers,
                               FLAGS.overwrite)
    except (MnistError, RecordsError, ValueError) as error:
        raise app.UsageError(str(error)) from None
    counts = ", ".join(f"{s} {v['count']}" for s, v in metadata["splits"].items())
    print(f"nMNIST O2I {100 * config.o2i:.3g} % -> {FLAGS.output_dir}: {counts}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
