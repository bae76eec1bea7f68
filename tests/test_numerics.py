"""Instance-norm and classifier numerics against float64 computations with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from needles_tf.models import InstanceNormalization, bagnet, build_classifier


class TextbookInstanceNorm(InstanceNormalization):
    """(x - mean) / sqrt(var + eps) * gamma + beta with a two-pass variance: the yardstick."""

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta


def _build(dtype: str, norm=InstanceNormalization, **kwargs) -> keras.Model:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    saved, bagnet.InstanceNormalization = bagnet.InstanceNormalization, norm
    try:
        return build_classifier(1, **kwargs)
    finally:
        bagnet.InstanceNormalization = saved
        keras.config.set_dtype_policy(previous)


def _gradients(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    images = tf.constant(images, model.compute_dtype)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    return np.concatenate([np.ravel(g.numpy()).astype(np.float64) for g in grads])


def test_instance_norm_matches_float64_when_the_mean_dwarfs_the_spread():
    rng = np.random.default_rng(0)
    x = 100.0 + rng.standard_normal((4, 16, 16, 8))  # mean 100x the standard deviation
    mean = x.mean((1, 2), keepdims=True)
    expected = (x - mean) / np.sqrt(((x - mean) ** 2).mean((1, 2), keepdims=True) + 1e-5)
    ours = keras.ops.convert_to_numpy(InstanceNormalization()(x.astype(np.float32)))
    textbook = keras.ops.convert_to_numpy(TextbookInstanceNorm()(x.astype(np.float32)))
    # the one-pass E[x^2] - E[x]^2 of the first version was 6.7e-3 off here
    assert np.abs(ours - expected).max() <= 1.5 * np.abs(textbook - expected).max() + 1e-6
    assert np.abs(ours - expected).max() < 1e-4


def gradient_distances(rf: int, size: int, pooling: str,
                       norms: dict[str, type]) -> dict[str, float]:
    """Relative Frobenius distance of each float32 model's gradients (all weights, one batch of
    4 uniform images) from float64 gradients with the same random weights, per norm layer."""
    kwargs = dict(receptive_field=rf, width_scale=1 / 16, pooling=pooling)
    keras.utils.set_random_seed(rf + size)
    reference = _build("float64", **kwargs)
    images = np.random.default_rng(rf).random((4, size, size, 1))
    labels = np.array([0, 1, 0, 1])
    truth = _gradients(reference, images, labels)
    distances = {}
    for name, norm in norms.items():
        model = _build("float32", norm, **kwargs)
        model.set_weights(reference.get_weights())
        error = _gradients(model, images, labels) - truth
        distances[name] = float(np.linalg.norm(error) / np.linalg.norm(truth))
    return distances


# The full grid of the issue (RF 9 and 33 at 64, RF 177 at 200, four poolings) runs in
# benches/bench_numerics.py; here two of its cases (the one-pass variance fails both, at 4.0x and
# 3.2x the textbook's distance).
@pytest.mark.parametrize("rf,size,pooling", [(9, 64, "max"), (33, 64, "logsumexp")])
def test_float32_gradients_are_as_close_to_float64_as_a_textbook_norm(rf, size, pooling):
    distance = gradient_distances(rf, size, pooling, {"ours": InstanceNormalization,
                                                       "textbook": TextbookInstanceNorm})
    assert distance["ours"] <= 1.5 * distance["textbook"], distance


def test_every_float32_weight_gradient_matches_float64():
    """Per variable, not pooled: with oneDNN's TensorFlow ops on (TF_ENABLE_ONEDNN_OPTS=1) on an
    AVX2 EPYC, the strided 1x1 projection's kernel gradient was 34-48 % off while every other
    variable agreed to 1e-6; the package's CPU default (needles_tf/runtime.py) avoids that."""
    model32 = _build("float32", receptive_field=9, width_scale=1 / 16, pooling="mean",
                     normalization=False)
    model64 = _build("float64", receptive_field=9, width_scale=1 / 16, pooling="mean",
                     normalization=False)
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    rng = np.random.default_rng(0)
    images, labels = rng.random((16, 24, 24, 1)), np.tile([0, 1], 8)
    for model in (model32, model64):
        with tf.GradientTape() as tape:
            logits = model(tf.constant(images, model.compute_dtype), training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        model.grads = [g.numpy().astype(np.float64)
                       for g in tape.gradient(loss, model.trainable_variables)]
    for variable, g32, g64 in zip(model32.trainable_variables, model32.grads, model64.grads,
                                  strict=True):
        error = np.linalg.norm(g32 - g64) / max(np.linalg.norm(g64), 1e-30)
        assert error < 1e-4, f"{variable.path}: float32 gradient {error:.1e} from float64"


@pytest.mark.parametrize("dtype", ["float32", "mixed_float16"])
def test_instance_norm_written_out_gradient_equals_automatic_differentiation(dtype):
    """The hand-written backward pass against TensorFlow differentiating the textbook formula,
    for the input, gamma and beta, at random scale and offset."""
    rng = np.random.default_rng(1)
    x = tf.constant(3.0 + 2.0 * rng.standard_normal((3, 7, 5, 4)), tf.float32)
    upstream = tf.constant(rng.standard_normal((3, 7, 5, 4)), tf.float32)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        layers = [InstanceNormalization(), TextbookInstanceNorm()]
        gamma, beta = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
        for layer in layers:
            layer.build(x.shape)
            layer.gamma.assign(gamma)
            layer.beta.assign(beta)
        results = []
        for layer in layers:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(tf.cast(x, layer.compute_dtype))
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
            results.append([g.numpy().astype(np.float64)
                            for g in tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])])
    finally:
        keras.config.set_dtype_policy(previous)
    tolerance = 1e-4 if dtype == "float32" else 3e-2
    for name, ours, textbook in zip(("x", "gamma", "beta"), *results, strict=True):
        error = np.linalg.norm(ours - textbook) / np.linalg.norm(textbook)
        assert error < tolerance, f"d loss / d {name}: {error:.1e} from automatic differentiation"
