"""needles-predict: needle probabilities of image files from an exported SavedModel.

  needles-predict --saved_model=runs/demo/saved_model --heatmap_dir=heatmaps a.png b.tif c.npy

Prints one JSON line per image ({file, probability, label, height, width[, heatmap,
evidence_map]}), or writes
them to --output. A file that cannot be used is reported on stderr and skipped (the exit status
is then 1); --strict stops at the first one instead. Grey images are repeated to RGB for RGB
models, RGB images averaged to grey for grey models.
"""

import json
import os
import sys

from absl import flags

from needles_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory written by needles-export.")
flags.DEFINE_string("heatmap_dir", None, "If set, write <file name>.heatmap.png per image: the "
                    "evidence map (red: needle, blue: none) over the image, enlarged when "
                    "small, with a colour bar and the probability; and the raw map [h, w] as "
                    "<file name>.heatmap.npy.")
flags.DEFINE_string("output", None, "JSON lines file; default stdout.")
flags.DEFINE_boolean("strict", False, "Stop at the first file that cannot be used.")
flags.DEFINE_integer("tile_size", None, "Stream each image through the model in tiles of this "
                     "many pixels (the same probability and evidence map, a tile's memory); "
                     "0: whole images; default: tiles of 1024 above 4096 x 4096 pixels.",
                     lower_bound=0)
flags.DEFINE_integer("max_pixels", None, "Refuse images above this many pixels before decoding "
                     "them (a guard against decompression bombs); default: what half the "
                     "available memory holds.", lower_bound=1)

PROG = "needles-predict"


def _write_lines(records, out) -> None:
    for record in records:
        out.write(json.dumps(record) + "\n")
        out.flush()


def main(argv):
    files = argv[1:]
    common.require_flags(PROG, "saved_model")
    if not files:
        sys.exit(f"{PROG}: error: no image files given")
    # Imported after the checks above, so that they need not wait for TensorFlow to load.
    from needles_tf.serving.predict import (
        PredictError,
        check_tile_size,
        load_serving_model,
        predict_files,
    )

    skipped = []

    def report(path, message):
        skipped.append(path)
        print(f"{PROG}: skipped {message}", file=sys.stderr)

    try:
        model = load_serving_model(FLAGS.saved_model)
        check_tile_size(model, FLAGS.tile_size)  # before --output is opened
        records = predict_files(model, files, FLAGS.heatmap_dir, FLAGS.strict, report,
                                FLAGS.tile_size, FLAGS.max_pixels)
        if FLAGS.output is None:
            _write_lines(records, sys.stdout)
        else:  # finished lines are kept even when a --strict error stops the run
            tmp = f"{FLAGS.output}.tmp-{os.getpid()}"
            try:
                with open(tmp, "w") as out:
                    _write_lines(records, out)
            finally:
                if os.path.exists(tmp):
                    os.replace(tmp, FLAGS.output)
    except (PredictError, OSError) as e:
        sys.exit(f"{PROG}: error: {e}")
    if skipped:
        sys.exit(f"{PROG}: error: {len(skipped)} of {len(files)} files skipped")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
