"""Tile streaming: logits, weight gradients and evidence maps equal the whole image's."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from needles_tf.models import RF_PRESETS, build_classifier, build_evidence_model
from needles_tf.models.streaming import StreamedClassifier, StreamingError
from needles_tf.models.tiles import TileGeometry
from needles_tf.serving.streamed import streamed_logits
from needles_tf.training.streamed import streamed_gradients

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# (receptive field, blocks per stage, image height, width, pixels above the minimum tile)
CASES = {9: ((1, 1, 1, 1), 61, 45, 0), 33: ((1, 1, 1, 1), 77, 59, 1),
         177: ((3, 4, 6, 3), 203, 190, 2)}


def _model(rf: int, pooling: str) -> keras.Model:
    keras.utils.set_random_seed(rf)
    return build_classifier(1, receptive_field=rf, width_scale=1 / 16, pooling=pooling,
                            normalization=False, blocks=CASES[rf][0])


def _whole_and_streamed(model, streamed, images, labels):
    variables = model.trainable_variables

    @tf.function
    def whole():
        with tf.GradientTape() as tape:
            logits = model(images)
            loss = LOSS(labels, logits)
        return tape.gradient(loss, variables), logits

    @tf.function
    def tiled():
        return streamed_gradients(streamed, images, lambda logits: LOSS(labels, logits),
                                  variables)

    return whole(), tiled()


# Every pooling at RF 9 and 33; at RF 177 (wide margins, slow to trace) the geometry does not
# depend on the pooling: max (tie counts) and attention (score weights) stand for the four.
POOLINGS_BY_RF = {9: ["max", "mean", "logsumexp", "attention"],
                  33: ["max", "mean", "logsumexp", "attention"], 177: ["max", "attention"]}


@pytest.mark.parametrize("rf,pooling", [(rf, pooling) for rf in sorted(CASES)
                                        for pooling in POOLINGS_BY_RF[rf]])
def test_streamed_logits_and_gradients_equal_the_whole_images(rf, pooling):
    """Odd sizes, tiles that do not divide the image, a tile just above the minimum."""
    _, height, width, extra = CASES[rf]
    model = _model(rf, pooling)
    streamed = StreamedClassifier(model, TileGeometry(RF_PRESETS[rf]).min_tile_size + extra)
    assert len(streamed.tiles(height, width)) >= 4
    rng = np.random.default_rng(rf)
    images = tf.constant(rng.random((2, height, width, 1), np.float32))
    labels = tf.constant([0, 1])
    (grads, logits), (tiled_grads, tiled_logits) = _whole_and_streamed(
        model, streamed, images, labels)
    np.testing.assert_allclose(tiled_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed(images), logits, rtol=1e-5, atol=1e-6)
    largest = max(float(tf.reduce_max(tf.abs(g))) for g in grads)
    for variable, g, t in zip(model.trainable_variables, grads, tiled_grads):
        # a gradient that is zero in exact arithmetic (attention's score bias: the softmax does
        # not move with it) is compared against the model's largest, not its own round-off
        scale = max(float(tf.reduce_max(tf.abs(g))), 0.1 * largest)
        np.testing.assert_allclose(t / scale, g / scale, atol=1e-5, err_msg=variable.path)
    assert float(tf.reduce_max(tf.abs(grads[0]))) > 0  # the encoder's first weights learn


def test_streamed_evidence_map_equals_the_whole_images():
    model = _model(33, "max")
    streamed = StreamedClassifier(model, 40)
    images = np.random.default_rng(0).random((1, 101, 83, 1)).astype(np.float32)
    whole = build_evidence_model(model)(images)
    logits, evidence = streamed.evidence(images)
    np.testing.assert_allclose(evidence, whole["evidence_map"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, whole["logits"], rtol=1e-5, atol=1e-6)
    compiled = tf.function(lambda x: streamed_logits(streamed, x))
    np.testing.assert_allclose(compiled(tf.constant(images)), whole["logits"], rtol=1e-5)


def test_instance_normalisation_and_too_small_tiles_are_refused():
    normalised = build_classifier(1, receptive_field=33, width_scale=1 / 16,
                                  blocks=(1, 1, 1, 1))
    with pytest.raises(StreamingError, match="instance normalisation.*--nonormalization"):
        StreamedClassifier(normalised, 256)
    model = _model(33, "max")
    with pytest.raises(StreamingError, match="give --tile_size of at least"):
        StreamedClassifier(model, 20)
