"""SavedModel export of a classifier for serving (loads with plain TensorFlow, no project code).

Signature "serving_default":
  images        float32 [N, H, W, C] in [0, 1], any H, W >= the network's minimum size
  -> probability  float32 [N]           softmax probability of class 1 (needle present)
     logits       float32 [N, 2]
     evidence_map float32 [N, h, w, 2]  the linear classifier applied at every location
The variable collection `min_image_size` holds that minimum size (one int32 scalar), and
`mpp`, where known, the microns per pixel of the training images (one float32 scalar: the
resolution whole-slide prediction reads slides at).

Images of any size, tile by tile (models/streaming.py; normalisation-free models only), with
the geometry of models/tiles.py from the collection `k3` (int32 [4], the 3x3 blocks per stage):
  "tile"    images [N, h, w, C] (one tile), valid int32 [4] (rows begin, end, columns begin,
            end of the exact locations in the tile's embedding)
            -> evidence_map [N, rows, cols, 2] of those locations, state_0 .. state_k
  "tile_locations"  the same and locations int32 [n >= 1], flat row-major indices into those
            exact locations: the state pools only them (whole slides pool their tissue only)
  "merge"   a_0 .. a_k, b_0 .. b_k (two tiles' or running states) -> state_0 .. state_k
  "finish"  state_0 .. state_k (all tiles merged) -> probability, logits
serving/predict.py's `saved_tile_functions` calls them.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from needles_tf.models import (
    InstanceNormalization,
    build_evidence_model,
    check_binary,
    classifier_k3,
    min_image_size,
    needle_probability,
)
from needles_tf.models.streaming import StreamedClassifier

SIGNATURE = "serving_default"
INPUT = "images"
MIN_SIZE_COLLECTION = "min_image_size"
K3_COLLECTION = "k3"
MPP_COLLECTION = "mpp"


def _serving_archive(classifier: keras.Model,
                     mpp: float | None = None) -> keras.export.ExportArchive:
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
    if mpp:
        archive.add_variable_collection(MPP_COLLECTION, [keras.Variable(
            float(mpp), dtype="float32", trainable=False, name=MPP_COLLECTION)])
    if not any(isinstance(layer, InstanceNormalization) for layer in classifier.layers):
        _add_tile_endpoints(archive, classifier, channels)
    return archive


def _add_tile_endpoints(archive: keras.export.ExportArchive, classifier: keras.Model,
                        channels: int) -> None:
    """The "tile", "merge" and "finish" endpoints and the `k3` collection (module docstring)."""
    streamed = StreamedClassifier(classifier, StreamedClassifier.any_tile_size(classifier))
    images_spec = tf.TensorSpec([None, None, None, channels], tf.float32, name=INPUT)

    def tile(images, valid, locations=None):
        size = tf.shape(images)
        win = (0, size[1], valid[0], valid[1], 0, size[2], valid[2], valid[3])
        embedding = streamed.embedding(images, win)
        state = streamed.tile_state(embedding, locations)
        return {"evidence_map": streamed.head(embedding), **_named(state)}

    probe = tile(tf.zeros([1, 64, 64, channels]), tf.constant([0, 1, 0, 1]))
    state_specs = [tf.TensorSpec([None, *probe[f"state_{i}"].shape[1:]], tf.float32,
                                 name=f"state_{i}") for i in range(len(probe) - 1)]

    def merge(*parts):
        half = len(parts) // 2
        return _named(streamed.merge(tuple(parts[:half]), tuple(parts[half:])))

    def finish(*state):
        logits = streamed.logits(streamed.pooled(tuple(state)))
        return {"probability": needle_probability(logits), "logits": logits}

    valid_spec = tf.TensorSpec([4], tf.int32, name="valid")
    archive.add_endpoint("tile", tile, input_signature=[images_spec, valid_spec])
    archive.add_endpoint("tile_locations", tile, input_signature=[
        images_spec, valid_spec, tf.TensorSpec([None], tf.int32, name="locations")])
    archive.add_endpoint("merge", merge, input_signature=[
        tf.TensorSpec(s.shape, s.dtype, name=f"{side}_{i}")
        for side in "ab" for i, s in enumerate(state_specs)])
    archive.add_endpoint("finish", finish, input_signature=state_specs)
    archive.add_variable_collection(K3_COLLECTION, [keras.Variable(
        list(classifier_k3(classifier)), dtype="int32", trainable=False, name=K3_COLLECTION)])


def _named(state) -> dict[str, tf.Tensor]:
    return {f"state_{i}": tf.cast(part, tf.float32) for i, part in enumerate(state)}


def export_saved_model(classifier: keras.Model, export_dir: str,
                       mpp: float | None = None) -> str:
    """Writes the serving SavedModel of `classifier` to `export_dir` atomically; returns the path.

    `mpp`: the microns per pixel of its training images, kept in the `mpp` collection.

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
        _serving_archive(classifier, mpp).write_out(tmp, verbose=False)
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
