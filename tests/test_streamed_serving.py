"""Images of any size in serving: the exported SavedModel's tile endpoints give the whole image's
probability and evidence map; the decompression-bomb guard is ours, from the header."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from needles_tf.models import build_classifier
from needles_tf.serving.export import export_saved_model
from needles_tf.serving.images import ImageError, default_max_pixels, read_image
from needles_tf.serving.predict import (
    PredictError,
    load_serving_model,
    predict_file,
    predict_files,
    predict_image,
)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_streamed_prediction_equals_the_whole_image(tmp_path, pooling):
    keras.utils.set_random_seed(3)
    model = build_classifier(1, receptive_field=33, width_scale=1 / 16, pooling=pooling,
                             blocks=(1, 1, 1, 1), normalization=False)
    serving = load_serving_model(export_saved_model(model, str(tmp_path / "export")))
    assert serving.k3 == (1, 1, 1, 1)
    image = np.random.default_rng(0).random((131, 97, 1)).astype(np.float32)
    whole_probability, whole_map = predict_image(serving, image, tile_size=0)
    probability, evidence = predict_image(serving, image, tile_size=48)
    assert probability == pytest.approx(whole_probability, abs=1e-6)
    np.testing.assert_allclose(evidence, whole_map, rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "image.npy")
    np.save(path, image)
    record = predict_file(serving, path, str(tmp_path / "image.heatmap.png"), tile_size=48)
    assert record["probability"] == pytest.approx(whole_probability, abs=1e-6)
    assert os.path.exists(tmp_path / "image.heatmap.png")
    with pytest.raises(PredictError, match="give --tile_size of at least"):  # not per file
        next(predict_files(serving, [path], tile_size=5))


def test_an_instance_normalised_export_refuses_tiles_with_a_clear_error(tmp_path):
    model = build_classifier(1, receptive_field=9, width_scale=1 / 16, blocks=(1, 1, 1, 1))
    serving = load_serving_model(export_saved_model(model, str(tmp_path / "export")))
    assert serving.k3 is None
    with pytest.raises(ValueError, match="cannot stream tiles"):
        predict_image(serving, np.zeros((64, 64, 1), np.float32), tile_size=32)


def test_the_pixel_guard_reads_the_header_and_names_its_flag(tmp_path, monkeypatch):
    # above twice Pillow's own limit (its default, as in a fresh process) the header is
    # still read: ours decides, not Pillow's DecompressionBombError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1024 * 1024 * 1024 // 4 // 3))
    huge = str(tmp_path / "huge.png")
    Image.new("1", (20000, 20000)).save(huge)  # 400 megapixels in 50 kB
    with pytest.raises(ImageError, match="400,000,000 pixels.*--max_pixels"):
        read_image(huge, max_pixels=5_000_000)
    path = str(tmp_path / "wide.png")
    Image.new("1", (3000, 2000)).save(path)  # 6 megapixels in a file of a few kilobytes
    with pytest.raises(ImageError, match="6,000,000 pixels.*5,000,000.*--max_pixels"):
        read_image(path, max_pixels=5_000_000)
    assert read_image(path, max_pixels=6_000_000).shape == (2000, 3000, 1)
    # the default comes from memory, not from Pillow's 179 megapixels (24 GiB: 800 million)
    assert default_max_pixels() > 179_000_000


@pytest.mark.parametrize("tile_size", [None, 40])
def test_evaluation_of_stored_bytes_gives_the_logits_of_the_float_images(tile_size):
    """A uint8 batch (make_dataset's as_bytes) evaluates as its float32 [0, 1] images, whole
    or streamed: never as pixels in [0, 255]."""
    import tensorflow as tf

    from needles_tf.evaluation.evaluate import logits_function

    model = build_classifier(1, receptive_field=33, width_scale=1 / 16, blocks=(1, 1, 1, 1),
                             normalization=False)
    raw = np.random.default_rng(0).integers(0, 256, (2, 77, 59, 1), dtype=np.uint8)
    forward = logits_function(model, tf.TensorSpec([None, 77, 59, 1], tf.uint8), tile_size)
    np.testing.assert_allclose(forward(tf.constant(raw)), model(raw / np.float32(255)),
                               rtol=1e-5, atol=1e-6)
