"""SavedModel export of a classifier for serving (loads with plain TensorFlow, no project code).

Signature "serving_default":
  images        float32 [N, H, W, C] in [0, 1], any H, W >= the network's minimum size
  -> probability  float32 [N]           softmax probability of class 1 (needle present)
     logits       float32 [N, 2]
     evidence_map float32 [N, h, w, 2]  the linear classifier applied at every location
The variable collection `min_image_size` holds that minimum size (one int32 scalar).
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from needles_tf.models import build_evidence_model, check_binary, min_image_size, needle_probability

SIGNATURE = "serving_default"
INPUT = "images"
MIN_SIZE_COLLECTION = "min_image_size"


def _serving_archive(classifier: keras.Model) -> keras.export.ExportArchive:
    check_binary(classifier)
    evidence_model = build_evidence_model(classifier)
    channels = classifier.input_shape[-1]
    min_size = min_image_size(classifier)

    def serve(images):
        # A signature checks the dtype of its input, not its shape: rank and channels are
        # checked here (EnsureShape runs at every call), as are size and finiteness.
        images = tf.ensure_shape(images, [None, None, None, channels])
        size = tf.reduce_min(tf.shape(images)[1:3])
        checks = [tf.debugging.assert_greater_equal(
            size, min_size, message=f"images must be at least {min_size} x {min_size} pixels")]
        with tf.control_dependencies(checks):
            images = tf.debugging.check_numerics(images, "images must be finite (no NaN or inf)")
            outputs = evidence_model(images, training=False)
        return {"probability": needle_probability(outputs["logits"]),
                "logits": outputs["logits"], "evidence_map": outputs["evidence_map"]}

    archive = keras.export.ExportArchive()
    archive.track(evidence_model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.float32, name=INPUT)])
    archive.add_variable_collection(
        MIN_SIZE_COLLECTION, [keras.Variable(min_size, dtype="int32", trainable=False,
                                             name=MIN_SIZE_COLLECTION)])
    return archive


def export_saved_model(classifier: keras.Model, export_dir: str) -> str:
    """Writes the serving SavedModel of `classifier` to `export_dir` atomically; returns the path.

    The model is written to a temporary sibling directory and renamed into place, so a reader
    never sees half an export. An existing SavedModel at `export_dir` is replaced; any other
    non-empty directory there is an error (FileExistsError), never overwritten.
    """
    export_dir = os.path.abspath(export_dir)
    replaceable = os.path.isdir(export_dir) and (
        not os.listdir(export_dir) or os.path.isfile(os.path.join(export_dir, "saved_model.pb")))
    if os.path.lexists(export_dir) and not replaceable:
        raise FileExistsError(f"{export_dir}: exists and is not a SavedModel; not overwriting it")
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{export_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.mkdir(tmp)
    except OSError as e:  # a clear OSError here, rather than TensorFlow's own error later
        raise OSError(e.errno, f"{parent}: cannot write the SavedModel there "
                               f"({e.strerror})") from None
    try:
        _serving_archive(classifier).write_out(tmp, verbose=False)
        if os.path.exists(export_dir):
            old = f"{export_dir}.old-{os.getpid()}"
            os.rename(export_dir, old)
            os.rename(tmp, export_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, export_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return export_dir
