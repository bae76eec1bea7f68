"""needles-export: a run's best model as a SavedModel for serving.

  needles-export --model_dir=runs/demo [--export_dir=runs/demo/saved_model]

Signature serving_default: images float32 [N, H, W, C] in [0, 1] -> probability [N],
logits [N, 2], evidence_map [N, h, w, 2]. Inspect with `saved_model_cli show --dir DIR --all`.
The training data's microns per pixel (dataset.json's crop_mpp), where recorded, goes with it
(the `mpp` collection), for needles-predict-slide.
"""

import os
import sys

from absl import flags

from needles_tf import run_dir
from needles_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory of needles-train (holds best.keras).")
flags.DEFINE_string("export_dir", None, "SavedModel directory; default <model_dir>/saved_model. "
                    "An existing SavedModel there is replaced.")


def main(argv):
    common.no_arguments(argv)
    common.require_flags("needles-export", "model_dir")
    export_dir = FLAGS.export_dir or os.path.join(FLAGS.model_dir, "saved_model")
    try:
        run_dir.best_model_path(FLAGS.model_dir)  # before waiting for TensorFlow to load
        common.warn_if_unfinished(FLAGS.model_dir)
        from needles_tf.serving.export import export_saved_model
        from needles_tf.serving.slide_model import recorded_mpp

        model = run_dir.load_best_model(FLAGS.model_dir)
        path = export_saved_model(model, export_dir, recorded_mpp(FLAGS.model_dir))
    except (run_dir.RunDirError, ValueError, OSError) as e:
        sys.exit(f"needles-export: error: {e}")
    print(f"SavedModel written to {path} (signature serving_default: images "
          f"[N, H, W, {model.input_shape[-1]}] -> probability, logits, evidence_map)")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
