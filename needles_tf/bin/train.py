"""needles-train: train a BagNet on a schema-v1 dataset with the paper's protocol.

  needles-train --flagfile=flags/train/paper.cfg --data_dir=tfrecords/nmnist_256_25_idx \
      --model_dir=runs/nmnist_1.2/rf33_s1_max_seed0 --seed=0

Re-running the same command resumes an interrupted run from its last finished epoch; a
finished run is not trained again. Results: <model_dir>/summary.json, metrics.csv, logs/.
"""

import sys

from absl import app, flags

from needles_tf import run_dir
from needles_tf.bin import common
from needles_tf.training.options import OPTIMIZERS, PRECISIONS, REMAT, STRATEGIES
from needles_tf.training.schedule import REFERENCE_SIZE

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Dataset directory (dataset.json + TFRecords).")
flags.DEFINE_string("noise", None, "Instead of --data_dir: train on isotropic Gaussian noise "
                    "with random labels (the memorisation experiment), SIZE:COUNT (COUNT "
                    "training images of SIZE x SIZE), HxW:COUNT or HxWxC:COUNT; val and test "
                    "are other noise (at most 512 images each).")
flags.DEFINE_string("model_dir", None, "Run directory (created; re-use resumes the run).")
flags.DEFINE_integer("receptive_field", 33, "Receptive field preset: 9, 33 or 177.")
flags.DEFINE_list("k3", None, "3x3 blocks per stage, e.g. 1,1,1,1 (overrides "
                  "--receptive_field).")
flags.DEFINE_list("blocks", ["3", "4", "6", "3"], "Bottleneck blocks per stage: ResNet-50's "
                  "3,4,6,3 (the paper's); fewer keep the receptive field at less compute.")
flags.DEFINE_float("width_scale", 1.0, "Capacity scale s (width 64*s).", lower_bound=0)
flags.DEFINE_enum("pooling", "max", ["max", "mean", "logsumexp", "attention"], "Global pooling.")
flags.DEFINE_boolean("normalization", True, "Instance normalisation in the encoder.")
flags.DEFINE_integer("epochs", 200, "Epochs (scaled up for small --train_size); the cap when "
                     "--stop_after_fit is set.", lower_bound=1)
flags.DEFINE_integer("stop_after_fit", 0, "Stop once the epoch's training accuracy has held "
                     ">= 0.99 (the paper's 'fit') for this many consecutive epochs; 0: train "
                     "every epoch (the paper's protocol). Recorded in summary.json (stop_reason "
                     "fit or cap, stopped_epoch).", lower_bound=0)
flags.DEFINE_integer("batch_size", 32, "Global (effective) batch size: the images of one "
                     "update, shared by all replicas and workers.", lower_bound=1)
flags.DEFINE_string("micro_batch_size", None, "Images per forward pass on one replica (device); "
                    "each replica accumulates the gradients of its share of the batch in "
                    "passes of this size (default: its whole share). 'auto': the largest "
                    "divisor of batch_size estimated to fit the device's memory, recorded in "
                    "config.json (a resume keeps it).")
flags.DEFINE_enum("remat", "none", list(REMAT), "Rematerialisation (gradient checkpointing): "
                  "'block' keeps only each block's input and recomputes the rest in the backward "
                  "pass (about half the memory per image at 512 x 512, capacity 1, for a "
                  "quarter more time), 'stage' each stage's; the same results. A resume may "
                  "change it.")
flags.DEFINE_integer("tile_size", None, "Stream each image through the network in tiles of at "
                     "most this many pixels a side (e.g. 512): the same logits and gradients "
                     "as whole images, with a step's memory set by the tile, not the image. "
                     "Needs --nonormalization (instance norm is global per image). A resume "
                     "may change it.", lower_bound=1)
flags.DEFINE_float("learning_rate", 5e-5, "Initial learning rate.", lower_bound=0)
flags.DEFINE_list("lr_milestones", ["80", "120", "160"], "Epochs where the rate decays.")
flags.DEFINE_float("lr_decay", 0.1, "Learning-rate factor at each milestone.")
flags.DEFINE_enum("optimizer", "rmsprop", list(OPTIMIZERS), "Optimizer.")
flags.DEFINE_integer("train_size", None, "Training images (nested subsets; default all).",
                     lower_bound=1)
flags.DEFINE_integer("reference_size", REFERENCE_SIZE, "Epochs and milestones are multiplied "
                     "by reference_size // train_size when --train_size is set (0: never).",
                     lower_bound=0)
flags.DEFINE_float("class_balance", 0.5, "Positive fraction of the training set; the minority "
                   "class is oversampled.", lower_bound=0.01, upper_bound=0.99)
flags.DEFINE_integer("seed", 0, "Seed of initialisation, selection and shuffling.")
flags.DEFINE_enum("precision", "auto", list(PRECISIONS), "auto: mixed_float16 on GPU, "
                  "float32 on CPU.")
flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "auto: mirrored over several "
                  "GPUs; multi_worker: one process per machine, the cluster from TF_CONFIG or "
                  "from the SLURM job step (srun); the chief (worker 0) writes the run.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA (auto: on GPU).")
flags.DEFINE_enum("cache", "auto", ["auto", "memory", "encoded", "none"],
                  "How the training split is held: decoded in memory when it fits (auto), "
                  "decoded, as PNGs (encoded), or streamed from the files (none).")
flags.DEFINE_string("init_from", None, "A finished run directory whose best model's weights "
                    "start this run (a warm start, e.g. a curriculum from easier data).")
flags.DEFINE_boolean("deterministic", False, "Bit-reproducible training: deterministic ops and "
                     "a streamed split (--cache=none) read in file order, at some cost in speed. "
                     "Without it a cached split's order is still a function of (seed, epoch).")
flags.DEFINE_boolean("overwrite", False, "Start afresh in a --model_dir that holds a run "
                     "(finished or not) with other settings, removing its files.")
flags.DEFINE_boolean("score_detection", False, "Also score the best model as a weakly "
                     "supervised detector on the test split (as needles-saliency: detection AP "
                     "and pointing accuracy of the saliency and evidence maxima), into "
                     "summary.json's 'detection'. Changes no training; a resume may change it.")
flags.DEFINE_integer("log_images", 8, "Training images shown in TensorBoard.", lower_bound=0)
flags.DEFINE_integer("verbose", None, "Keras progress: 1 bar, 2 one line per epoch, 0 none "
                     "(default: a bar on a terminal, else a line per epoch).", lower_bound=0,
                     upper_bound=2)
flags.mark_flags_as_required(["model_dir"])
flags.mark_flags_as_mutual_exclusive(["data_dir", "noise"], required=True)


def main(argv):
    common.no_arguments(argv)
    if FLAGS.noise:
        _check_noise_flags()
    from needles_tf.training.callbacks import StopWhenSet
    from needles_tf.training.trainer import TrainConfig, TrainingError, train

    config = TrainConfig(
        data_dir=FLAGS.data_dir, model_dir=FLAGS.model_dir,
        receptive_field=None if FLAGS.k3 else FLAGS.receptive_field,
        k3=common.int_list("k3", FLAGS.k3), blocks=common.int_list("blocks", FLAGS.blocks),
        width_scale=FLAGS.width_scale,
        pooling=FLAGS.pooling, normalization=FLAGS.normalization, epochs=FLAGS.epochs,
        stop_after_fit=FLAGS.stop_after_fit,
        batch_size=FLAGS.batch_size, micro_batch_size=_micro_batch(FLAGS.micro_batch_size),
        learning_rate=FLAGS.learning_rate,
        lr_milestones=common.int_list("lr_milestones", FLAGS.lr_milestones),
        lr_decay=FLAGS.lr_decay, optimizer=FLAGS.optimizer, train_size=FLAGS.train_size,
        reference_size=FLAGS.reference_size, class_balance=FLAGS.class_balance,
        seed=FLAGS.seed, precision=FLAGS.precision, strategy=FLAGS.strategy,
        jit_compile=FLAGS.jit_compile, cache=FLAGS.cache, deterministic=FLAGS.deterministic,
        log_images=FLAGS.log_images,
        init_from=FLAGS.init_from, remat=FLAGS.remat, tile_size=FLAGS.tile_size,
        noise=FLAGS.noise,
        score_detection=FLAGS.score_detection)
    verbose = FLAGS.verbose if FLAGS.verbose is not None else 1 if sys.stdout.isatty() else 2
    try:
        summary = train(config, verbose=verbose, overwrite=FLAGS.overwrite,
                        extra_callbacks=[StopWhenSet(common.INTERRUPTED)])
    except (TrainingError, ValueError, run_dir.RunDirError) as e:
        sys.exit(f"needles-train: error: {e}")
    except KeyboardInterrupt:
        done = run_dir.committed_epochs(FLAGS.model_dir)
        print(f"\nneedles-train: interrupted after epoch {done}; run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    if summary.get("status") == "worker":
        print(f"{FLAGS.model_dir}: this worker's part is done; the chief wrote the run")
        return
    print(result_line(FLAGS.model_dir, summary))


def _check_noise_flags() -> None:
    """--noise names its own size: it takes no selection from a dataset."""
    from needles_tf.input.noise import NoiseSpec

    try:
        NoiseSpec.parse(FLAGS.noise)
    except ValueError as e:
        raise app.UsageError(f"--{e}") from None
    if FLAGS.train_size is not None or FLAGS.class_balance != 0.5:
        raise app.UsageError("--noise sets the training set's size (its COUNT) and has random "
                             "labels: leave out --train_size and --class_balance")


def _micro_batch(value: str | None) -> int | str | None:
    """--micro_batch_size: a positive integer or 'auto'."""
    if value is None or value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise app.UsageError(f"--micro_batch_size must be a positive integer or 'auto', got {value!r}")


def result_line(model_dir: str, summary: dict) -> str:
    """The one line a finished run ends with: best epoch, accuracies, fit or not, time."""
    fit = summary["epochs_to_fit"]
    trained = summary.get("stopped_epoch", summary["epochs"])
    stop = f" (stopped: fit held {summary['stop_rule']['patience']} epochs)" if summary.get(
        "stop_reason") == "fit" and summary.get("stop_rule") else ""
    return (f"{model_dir}: best epoch {summary['best_epoch']} of {trained}{stop}, "
            f"val accuracy {summary['val_accuracy']:.4f}, "
            f"test accuracy {summary['test_accuracy']:.4f}, "
            + (f"fit (training accuracy >= 0.99) at epoch {fit}" if fit is not None else
               f"not fit (training accuracy {summary['final_train_accuracy']:.4f} < 0.99)")
            + f", {summary['wall_seconds']:.0f} s")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
