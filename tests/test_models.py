"""BagNet classifier: size, receptive field, poolings, serialisation, precision, errors."""

import ast
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import needles_tf.models as models
from needles_tf.models import (
    AttentionPooling,
    LogSumExpPooling,
    bagnet,
    build_classifier,
    build_evidence_model,
    receptive_field,
)

TINY = dict(width_scale=1 / 16)


def test_paper_model_has_exact_parameter_count():
    model = build_classifier(1, receptive_field=33, width_scale=1.0, pooling="max")
    assert model.count_params() == 23_093_442


@pytest.mark.parametrize("k3, expected", [
    ((1, 1, 0, 0), 9), ((1, 1, 1, 1), 33), ((3, 4, 6, 3), 177), ((0, 0, 0, 0), 3),
    ((2, 0, 0, 0), 3 + 2 + 4), ((0, 0, 3, 2), 3 + 8 + 16 + 16 + 16 + 16),
])
def test_computed_receptive_field(k3, expected):
    assert receptive_field(k3) == expected


@pytest.mark.parametrize("k3, blocks", [
    ((1, 1, 0, 0), bagnet.STAGE_BLOCKS), ((1, 1, 1, 1), bagnet.STAGE_BLOCKS),
    ((3, 4, 6, 3), bagnet.STAGE_BLOCKS), ((2, 0, 0, 0), bagnet.STAGE_BLOCKS),
    ((0, 1, 2, 1), bagnet.STAGE_BLOCKS), ((1, 1, 1, 1), (1, 1, 1, 1)), ((0, 1, 2, 1), (1, 2, 3, 2)),
])
def test_measured_receptive_field_equals_computed(k3, blocks):
    """Input-gradient support of one embedding location, with normalisation off; a shallower
    encoder (fewer blocks per stage) has the same receptive field."""
    model = build_classifier(1, k3=k3, normalization=False, blocks=blocks, **TINY)
    # Positive weights and inputs keep every ReLU open, so the gradient is non-zero wherever the
    # location depends on the input; normalising each filter to sum 1 keeps activations finite.
    for weight in model.trainable_weights:
        positive = tf.abs(weight) + 1e-3
        weight.assign(positive / tf.reduce_sum(positive, axis=list(range(len(weight.shape) - 1)),
                                               keepdims=True))
    encoder = keras.Model(model.input, model.get_layer("embedding").output)
    size = 224
    h, w = 13, 12  # a location whose receptive field lies inside the image

    # Inside tf.function: eager conv2d_backprop_filter segfaults in TF 2.21's oneDNN CPU build.
    @tf.function
    def input_gradient(image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            embedding = encoder(image)
            value = tf.reduce_sum(embedding[0, h, w])
        return tape.gradient(value, image)

    grad = input_gradient(tf.ones((1, size, size, 1)))[0, :, :, 0].numpy()
    rows = np.nonzero(np.abs(grad).sum(axis=1))[0]
    cols = np.nonzero(np.abs(grad).sum(axis=0))[0]
    assert 0 < rows[0] and rows[-1] < size - 1, "receptive field must lie inside the image"
    assert rows[-1] - rows[0] + 1 == receptive_field(k3)
    assert cols[-1] - cols[0] + 1 == receptive_field(k3)
    # centred where heatmaps place it (needles_tf.heatmaps)
    centre = bagnet.EMBEDDING_OFFSET + bagnet.EMBEDDING_STRIDE * np.array([h, w])
    assert (rows[0] + rows[-1]) / 2 == centre[0] and (cols[0] + cols[-1]) / 2 == centre[1]


def test_poolings_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    flat = x.reshape(2, -1, 5)
    expected = {
        "max": flat.max(axis=1),
        "mean": flat.mean(axis=1),
        "logsumexp": np.log(np.exp(flat).sum(axis=1)),
    }
    for name, want in expected.items():
        got = keras.ops.convert_to_numpy(models.pooling.global_pooling(name)(x))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)

    attention = AttentionPooling()
    got = keras.ops.convert_to_numpy(attention(x))
    v, c = [keras.ops.convert_to_numpy(t) for t in attention.hidden.weights]
    w, d = [keras.ops.convert_to_numpy(t) for t in attention.score.weights]
    scores = (np.tanh(flat @ v + c) @ w + d)[..., 0]
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, np.einsum("bl,blc->bc", weights, flat), rtol=1e-5, atol=1e-5)


def test_logsumexp_is_finite_for_large_activations():
    x = np.full((2, 4, 4, 3), 1e4, dtype="float32")
    got = keras.ops.convert_to_numpy(LogSumExpPooling()(x))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, 1e4 + np.log(16), rtol=1e-6)


def test_attention_weights_sum_to_one_per_image():
    x = np.random.default_rng(1).normal(size=(3, 5, 7, 8)).astype("float32") * 10
    weights = keras.ops.convert_to_numpy(AttentionPooling().attention_weights(x))
    assert weights.shape == (3, 35)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(weights >= 0)


@pytest.mark.parametrize("kernel", [1, 3])
def test_shortcut_and_main_path_agree_at_every_size(kernel):
    """A strided block's 1x1 shortcut and its padded k x k main path both give ceil(n / 2), so
    no cropping is ever needed (Keras' Add raises on static shapes that differ)."""
    inputs = keras.Input((None, None, 4))
    block = keras.Model(inputs, bagnet.bottleneck(inputs, 2, 2, kernel, False, "block"))
    for size in range(1, 257):
        shape = block.compute_output_shape((1, size, size + 1, 4))
        assert shape == (1, -(-size // 2), -(-(size + 1) // 2), 8), size


def test_model_runs_on_inputs_of_different_sizes():
    model = build_classifier(1, receptive_field=33, **TINY)
    for shape in [(2, 32, 32, 1), (1, 80, 48, 1), (3, 64, 64, 1)]:
        logits = model(np.zeros(shape, "float32"))
        assert logits.shape == (shape[0], 2)


@pytest.mark.parametrize("pooling", models.POOLINGS)
def test_keras_save_and_load_gives_identical_outputs(tmp_path, pooling):
    model = build_classifier(3, receptive_field=9, pooling=pooling, **TINY)
    x = np.random.default_rng(2).random((2, 40, 36, 3)).astype("float32")
    path = tmp_path / f"{pooling}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)),
                                  keras.ops.convert_to_numpy(loaded(x)))


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("pooling", models.POOLINGS)
def test_mixed_precision_gives_finite_float32_logits(mixed_precision, pooling):
    model = build_classifier(1, receptive_field=33, pooling=pooling, **TINY)
    assert model.get_layer("stem_conv1").compute_dtype == "float16"
    logits = model(np.random.default_rng(3).random((2, 64, 64, 1)).astype("float32") * 255)
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))


def test_mean_of_evidence_map_equals_mean_pooled_logits():
    model = build_classifier(1, receptive_field=33, pooling="mean", **TINY)
    images = np.random.default_rng(4).random((2, 64, 48, 1)).astype("float32")
    outputs = build_evidence_model(model)(images)
    evidence = keras.ops.convert_to_numpy(outputs["evidence_map"])
    assert evidence.shape == (2, 8, 6, 2)
    np.testing.assert_allclose(evidence.mean(axis=(1, 2)),
                               keras.ops.convert_to_numpy(outputs["logits"]), rtol=1e-4, atol=1e-5)


def test_fewer_blocks_keep_sizes_and_are_recognised_after_saving(tmp_path):
    """Depth changes neither the embedding's size nor the smallest input; a saved shallow model
    is still read as a BagNet with its k3 (evaluation and export rely on that)."""
    deep = build_classifier(1, receptive_field=33, **TINY)
    shallow = build_classifier(1, receptive_field=33, blocks=(1, 1, 1, 1), **TINY)
    assert shallow.name == "bagnet_b1111_k1111_s0.0625_max"
    assert deep.name == "bagnet_k1111_s0.0625_max"
    assert shallow.count_params() < deep.count_params() / 2
    for size in (models.min_input_size((1, 1, 1, 1)), 50, 64):
        shape = (1, size, size + 3, 1)
        assert (build_evidence_model(shallow).compute_output_shape(shape)["evidence_map"]
                == build_evidence_model(deep).compute_output_shape(shape)["evidence_map"])
    path = tmp_path / "shallow.keras"
    shallow.save(path)
    loaded = keras.saving.load_model(path)
    assert models.classifier_k3(loaded) == (1, 1, 1, 1)
    assert models.min_image_size(loaded) == models.min_image_size(deep)


@pytest.mark.parametrize("kwargs, message", [
    (dict(receptive_field=33, blocks=(1, 0, 1, 1)), "blocks must be four positive integers"),
    (dict(receptive_field=33, blocks=(1, 1, 1)), "blocks must be four positive integers"),
    (dict(receptive_field=177, blocks=(1, 1, 1, 1)),
     r"each between 0 and its stage's block count \(1, 1, 1, 1\)"),
    (dict(receptive_field=17), "receptive_field must be one of"),
    (dict(k3=(1, 1, 1)), "k3 must be four integers"),
    (dict(k3=(4, 0, 0, 0)), "k3 must be four integers"),
    (dict(receptive_field=33, k3=(1, 1, 1, 1)), "exactly one of"),
    (dict(receptive_field=33, width_scale=0), "width_scale must be positive"),
    (dict(receptive_field=33, width_scale=-1), "width_scale must be positive"),
    (dict(receptive_field=33, width_scale=0.3), "whole channel count"),
    (dict(receptive_field=33, pooling="median"), "pooling must be one of max, mean"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(1, **kwargs)


def test_too_small_input_raises_clear_error():
    model = build_classifier(1, receptive_field=33, **TINY)
    with pytest.raises(ValueError, match="needs at least 3"):
        model(np.zeros((1, 2, 2, 1), "float32"))


def test_models_package_does_not_import_tensorflow():
    for path in pathlib.Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "tensorflow" for n in names), path
